"""Streaming reads of ingest shards with WebDataset: for training (shuffled, two views) and for
evaluation/embedding (ordered, one deterministic view).

``shardshuffle`` and ``nodesplitter`` are always passed explicitly: WebDataset's defaults changed
across versions and a silent default can feed every node the same shards.
"""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import Callable
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from data_specs.shards import SHARD_NAME_RE


class ShardsNotFound(FileNotFoundError):
    """ROOT has no committed shards."""


def list_shards(root: str | Path) -> list[str]:
    """Committed shard paths under ``ROOT/shards`` (those whose manifest part exists), sorted."""
    shards_dir, manifest_dir = Path(root) / "shards", Path(root) / "manifest"
    out = []
    for path in sorted(shards_dir.glob("shard-*.tar")):
        match = SHARD_NAME_RE.match(path.name)
        if match and (manifest_dir / f"part-{match.group(1)}.parquet").exists():
            out.append(str(path))
    if not out:
        raise ShardsNotFound(f"no committed shards under {str(shards_dir)!r}; run `lakelabel ingest` first")
    return out


def decode_rgb(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    return im.convert("RGB")


def read_shard_images(root: str | Path, shard_of: dict[str, str]) -> dict[str, Image.Image]:
    """``{key: shard name}`` → ``{key: RGB image}``, one pass over each shard holding a wanted key
    (stopping once it has them all)."""
    by_shard: dict[str, set[str]] = {}
    for key, shard in shard_of.items():
        by_shard.setdefault(shard, set()).add(key)
    images: dict[str, Image.Image] = {}
    for shard, keys in sorted(by_shard.items()):
        left = set(keys)
        with tarfile.open(Path(root) / "shards" / shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == "jpg" and key in left:
                    images[key] = decode_rgb(tar.extractfile(member).read())
                    left.discard(key)
                    if not left:
                        break
    return images


def train_loader(
    shards: list[str],
    transform: Callable,
    batch_size: int,
    batches_per_epoch: int,
    workers: int,
    shuffle_buffer: int,
    seed: int,
) -> torch.utils.data.DataLoader:
    """One epoch of ``(view1, view2)`` batches: exactly ``batches_per_epoch`` batches.

    Deterministic for a given ``seed`` (shard order, shuffle buffer, augmentations in every worker),
    so a resumed run replays the same epoch and skips the batches it already trained on.
    """
    dataset = (
        wds.WebDataset(
            shards,
            shardshuffle=len(shards),
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            seed=seed,
            resampled=False,
            empty_check=False,
        )
        .shuffle(shuffle_buffer, rng=random.Random(seed))
        .to_tuple("jpg")
        .map(_SeededTransform(transform, seed))
        .batched(batch_size, partial=False)
        .repeat()
    )
    generator = torch.Generator().manual_seed(seed)
    # the epoch length is counted in this process: a dataset-level with_epoch counts per loader
    # worker, and 2 workers would make an "epoch" twice as long
    return wds.WebLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        generator=generator,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context=_mp_context(workers),
    ).with_epoch(batches_per_epoch)


def eval_loader(
    shards: list[str],
    transform: Callable,
    batch_size: int,
    workers: int,
    keys: set[str] | None = None,
    with_url: bool = False,
) -> torch.utils.data.DataLoader:
    """Every sample (or only ``keys``) once: ``(images, keys)`` batches (the last one may be short),
    ``(images, keys, shard_paths)`` with ``with_url``.

    With ``workers`` > 1 the batch order interleaves shards; keys always travel with their images.
    """
    dataset = wds.WebDataset(
        shards,
        shardshuffle=False,
        nodesplitter=wds.single_node_only,
        workersplitter=wds.split_by_worker,
        empty_check=False,
    )
    if keys is not None:
        dataset = dataset.select(_KeyIn(keys))
    fields = ("jpg", "__key__", "__url__") if with_url else ("jpg", "__key__")
    dataset = (
        dataset.to_tuple(*fields).map(_TransformJpegKeepKey(transform)).batched(batch_size, partial=True)
    )
    return wds.WebLoader(
        dataset, batch_size=None, num_workers=workers, multiprocessing_context=_mp_context(workers)
    )


class _TransformJpeg:
    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, sample: tuple):
        return self.transform(decode_rgb(sample[0]))


class _SeededTransform(_TransformJpeg):
    """Augment each sample under its own seed (run seed, loader worker, position in the worker's stream).

    Augmentations then do not touch the training process's global RNG and replay exactly on resume,
    whatever the number of loader workers.
    """

    def __init__(self, transform: Callable, seed: int):
        super().__init__(transform)
        self.seed, self.count = seed, 0

    def __call__(self, sample: tuple):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        self.count += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + worker * 10_000_019 + self.count) % (2**63))
            return self.transform(decode_rgb(sample[0]))


class _TransformJpegKeepKey(_TransformJpeg):
    def __call__(self, sample: tuple):
        return (self.transform(decode_rgb(sample[0])), *sample[1:])


class _KeyIn:
    def __init__(self, keys: set[str]):
        self.keys = keys

    def __call__(self, sample: dict) -> bool:
        return sample["__key__"] in self.keys


def _mp_context(workers: int) -> str | None:
    """Spawn loader workers once FAISS (OpenMP) is loaded in this process: a forked child would hang."""
    import sys

    if workers <= 0:
        return None
    return "spawn" if "faiss" in sys.modules else None


class KeyedShards(torch.utils.data.IterableDataset):
    """Stream the samples ``samples`` (key → (class index or −1, ruled-out class indices, weight))
    of ``shards`` as dicts: ``image``, ``label``, ``negatives`` (bool ``(C,)``), ``weight``, ``key``;
    one pass, or endlessly with ``repeat``."""

    def __init__(
        self,
        shards: list[str],
        samples: dict[str, tuple[int, list[int], float]],
        classes: list[str],
        transform: Callable | None = None,
        shuffle: int = 0,
        seed: int = 0,
        repeat: bool = False,
    ):
        self.shards, self.samples, self.classes = sorted(shards), samples, classes
        self.transform = transform
        self.shuffle, self.seed, self.repeat = shuffle, seed, repeat

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        positives = sum(1 for label, _, _ in self.samples.values() if label >= 0)
        return {
            "samples": len(self.samples),
            "positives": positives,
            "negative_only": len(self.samples) - positives,
        }

    def _pipeline(self):
        dataset = wds.WebDataset(
            self.shards,
            shardshuffle=len(self.shards) if self.shuffle else False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            seed=self.seed,
            empty_check=False,
        ).select(_KeyIn(set(self.samples)))
        if self.shuffle:
            dataset = dataset.shuffle(self.shuffle, rng=random.Random(self.seed))
        dataset = dataset.map(self._sample)
        # an endless stream: a step-bounded trainer keeps one loader (and its workers) for all epochs
        return dataset.repeat() if self.repeat else dataset

    def _sample(self, sample: dict) -> dict:
        label, negatives, weight = self.samples[sample["__key__"]]
        image = decode_rgb(sample["jpg"])
        mask = torch.zeros(len(self.classes), dtype=torch.bool)
        mask[negatives] = True
        return {
            "image": self.transform(image) if self.transform else image,
            "label": label,
            "negatives": mask,
            "weight": weight,
            "key": sample["__key__"],
        }

    def __iter__(self):
        return iter(self._pipeline())

    def loader(self, batch_size: int, workers: int = 0) -> torch.utils.data.DataLoader:
        """A DataLoader over this dataset (spawned workers once FAISS is loaded)."""
        return torch.utils.data.DataLoader(
            self, batch_size=batch_size, num_workers=workers, multiprocessing_context=_mp_context(workers)
        )
