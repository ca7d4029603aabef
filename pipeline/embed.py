"""Embed every shard with a trained encoder: ``ROOT/embeddings/<encoder>-<sha12>/emb-NNNNNN.{npy,parquet}``.

Resumable shard by shard (a part is committed when its Parquet exists; see
``data_specs/embeddings.md``); memory holds only the shards in flight (one per loader worker),
whatever the size of the lake. On GPU: bf16 autocast and channels_last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from lakelabel.data_specs.embeddings import (
    DTYPES,
    EMBEDDING_KEYS_SCHEMA,
    EMBEDDINGS_SCHEMA_VERSION,
    embeddings_dir_name,
    part_names,
    read_meta,
    validate_meta,
    validate_part,
)
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.manifest import MANIFEST_SCHEMA
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes
from lakelabel.pipeline.augment import eval_transform
from lakelabel.pipeline.checks import check_choice
from lakelabel.pipeline.config import EmbedConfig
from lakelabel.pipeline.devices import autocast, compute_device
from lakelabel.pipeline.encoders import Encoder
from lakelabel.pipeline.encoders import load_encoder as resolve_encoder
from lakelabel.pipeline.shard_data import eval_loader, list_shards


def load_encoder(root: str | Path, config: EmbedConfig) -> Encoder:
    """The encoder ``config`` names (see :func:`lakelabel.pipeline.encoders.load_encoder`)."""
    return resolve_encoder(
        root, config.encoder, config.weights, config.backbone, config.stem, config.image_size, config.seed
    )


def sharded_counts(root: str | Path) -> dict[str, int]:
    """Samples per shard according to the manifest (rows with status ``sharded``)."""
    table = pq.read_table(Layout(root).manifest, columns=["status", "shard"], schema=MANIFEST_SCHEMA)
    df = table.to_pandas()
    return df[df.status == "sharded"].groupby("shard").size().to_dict()


def embed(
    root: str | Path,
    config: EmbedConfig | None = None,
    shards: list[str] | None = None,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Embed ROOT's committed shards (or ``shards``, file names or paths) not yet embedded; returns a
    summary. ``progress(images_done, images_total)`` is called after every batch."""
    config = config or EmbedConfig()
    check_choice("dtype", config.dtype, DTYPES)
    root = Path(root)
    start = time.perf_counter()
    all_shards = list_shards(root)
    if shards is not None:
        wanted = {Path(s).name for s in shards}
        unknown = wanted - {Path(s).name for s in all_shards}
        if unknown:
            raise ValueError(f"not committed shards of {str(root)!r}: {sorted(unknown)}")
        all_shards = [s for s in all_shards if Path(s).name in wanted]
    encoder = load_encoder(root, config)
    name = f"{encoder.name}-flip" if config.flip_average else encoder.name
    out_dir = Layout(root).embeddings / embeddings_dir_name(name, encoder.sha256)
    meta = {
        "schema_version": EMBEDDINGS_SCHEMA_VERSION,
        **encoder.describe(),
        "dim": encoder.dim,
        "dtype": config.dtype,
        "normalized": True,
        "flip_average": config.flip_average,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "meta.json").exists():
        existing = read_meta(out_dir)
        if {k: existing.get(k, v) for k, v in meta.items()} != meta:
            raise ValueError(
                f"{str(out_dir)!r} holds embeddings made with other settings ({existing}); "
                f"use the same image_size/dtype or remove the directory"
            )
    else:
        atomic_write_bytes(out_dir / "meta.json", json.dumps(validate_meta(meta), indent=1).encode())
    remove_uncommitted(out_dir, [Path(s).name for s in all_shards])  # (only its own: tasks run side by side)
    pending = [s for s in all_shards if not (out_dir / part_names(Path(s).name)[0]).exists()]
    counts = sharded_counts(root)
    images = _embed_shards(encoder, pending, counts, out_dir, config, device, progress) if pending else 0
    seconds = time.perf_counter() - start
    return {
        "embeddings": str(out_dir),
        "encoder": encoder.name,
        "encoder_sha256": encoder.sha256,
        "shards": len(all_shards),
        "shards_embedded": len(pending),
        "shards_skipped": len(all_shards) - len(pending),
        "images_embedded": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1) if images else None,
    }


@torch.no_grad()
def _embed_shards(
    encoder: Encoder,
    shards: list[str],
    counts: dict[str, int],
    out_dir: Path,
    config: EmbedConfig,
    device,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    dev = compute_device(device)
    model = encoder.module.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = eval_loader(
        shards,
        eval_transform(encoder.image_size, encoder.mean, encoder.std),
        config.batch_size,
        config.workers,
        with_url=True,
    )
    buffers: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    done, seen, total = 0, 0, sum(counts.get(Path(s).name, 0) for s in shards)
    for images, keys, urls in loader:
        seen += len(keys)
        if progress:
            progress(seen, total)
        images = images.to(dev, non_blocking=True)
        if dev.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(config.precision, dev):
            feats = model(images).float()
            if config.flip_average:  # the mirror image's features too (test-time augmentation)
                feats = (feats + model(images.flip(-1)).float()) / 2
        feats = F.normalize(feats.float(), dim=1).to(getattr(torch, config.dtype)).cpu().numpy()
        for shard in sorted(set(urls)):
            rows = [i for i, u in enumerate(urls) if u == shard]
            buf_keys, buf_feats = buffers.setdefault(shard, ([], []))
            buf_keys.extend(keys[i] for i in rows)
            buf_feats.append(feats[rows])
            name = Path(shard).name
            if len(buf_keys) == counts.get(name, -1):
                _write_part(out_dir, name, buf_keys, np.concatenate(buf_feats), config.dtype, encoder.dim)
                done += len(buf_keys)
                del buffers[shard]
    if buffers:
        detail = ", ".join(
            f"{Path(s).name}: {len(k)} of {counts.get(Path(s).name)}" for s, (k, _) in buffers.items()
        )
        raise RuntimeError(f"shards read incompletely (not committed; re-run embed): {detail}")
    return done


def _write_part(out_dir: Path, shard: str, keys: list[str], matrix: np.ndarray, dtype: str, dim: int) -> None:
    """Commit one part: matrix (temp → rename), then its keys Parquet (temp → rename) as the marker."""
    keys_name, npy_name = part_names(shard)
    table = pa.table({"key": keys, "shard": [shard] * len(keys)}, schema=EMBEDDING_KEYS_SCHEMA)
    validate_part(table, matrix, {"dim": dim, "dtype": dtype})
    atomic_write(out_dir / npy_name, lambda f: np.save(f, matrix, allow_pickle=False))
    atomic_write(out_dir / keys_name, lambda f: pq.write_table(table, f))


def remove_uncommitted(directory: Path, shards: list[str]) -> int:
    """Delete what an interrupted embedding of ``shards`` left: its temp files and a ``.npy`` without
    its Parquet marker; returns how many. Only these shards' files: embed tasks of other shards may be
    writing theirs in the same folder."""
    removed = 0
    for shard in shards:
        keys_name, npy_name = part_names(shard)
        leftovers = [*directory.glob(f".{npy_name}*.tmp"), *directory.glob(f".{keys_name}*.tmp")]
        if not (directory / keys_name).exists() and (directory / npy_name).exists():
            leftovers.append(directory / npy_name)
        for path in leftovers:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
