"""Streaming reads of ingest shards with WebDataset: for training (shuffled, two views) and for
evaluation/embedding (ordered, one deterministic view).

``shardshuffle`` and ``nodesplitter`` are always passed explicitly: WebDataset's defaults changed
across versions and a silent default can feed every node the same shards.
"""

from __future__ import annotations

import io
import itertools
import random
import tarfile
from collections.abc import Callable
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.shards import SHARD_NAME_RE


class ShardsNotFound(FileNotFoundError):
    """ROOT has no committed shards."""


def list_shards(root: str | Path) -> list[str]:
    """Committed shard paths under ``ROOT/shards`` (those whose manifest part exists), sorted."""
    shards_dir, manifest_dir = Layout(root).shards, Layout(root).manifest
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
        with tarfile.open(Layout(root).shard(shard)) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == "jpg" and key in left:
                    images[key] = decode_rgb(tar.extractfile(member).read())
                    left.discard(key)
                    if not left:
                        break
    return images


class TrainStream(torch.utils.data.IterableDataset):
    """One endless stream of training batches for a whole run, epoch after epoch from ``start_epoch``.

    Each epoch is a function of ``(seed, epoch)`` alone: its shard order and shuffle buffer are
    seeded by the epoch, and each of the ``W`` loader workers delivers ``ceil(batches_per_epoch / W)``
    of the epoch's batches (the DataLoader takes batches from its workers in turn, so every epoch
    starts at worker 0), reading its share of the shards and wrapping around them if they run
    short; :func:`train_batches` keeps the first ``batches_per_epoch`` of each epoch. So one
    DataLoader serves every epoch (no worker restart per epoch) and a run resumed at
    ``start_epoch`` replays that epoch exactly. Samples are decoded and passed through ``transform``
    under a per-sample seed ``(seed, epoch, worker, position)``; batches are stacked tensors (or
    tuples of them when ``transform`` returns tuples).
    """

    def __init__(
        self,
        shards: list[str],
        transform: Callable,
        batch_size: int,
        batches_per_epoch: int,
        shuffle_buffer: int,
        seed: int,
        start_epoch: int = 0,
    ):
        self.shards, self.transform = sorted(shards), transform
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.shuffle_buffer, self.seed, self.start_epoch = shuffle_buffer, seed, start_epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _rank_world()
        quota = -(-self.batches_per_epoch // workers)
        for epoch in itertools.count(self.start_epoch):
            epoch_seed = self.seed * 100_003 + epoch
            order = list(self.shards)
            random.Random(epoch_seed).shuffle(order)
            order = order[rank::world] or order
            mine = order[worker::workers] if len(order) >= workers else order
            keep = None if len(order) >= workers else (worker, workers)  # fewer shards than workers
            rng = random.Random(epoch_seed * 1_000_003 + worker)
            samples = self._samples(mine, keep, rng)
            for index in range(quota):
                batch = []
                for position in range(index * self.batch_size, (index + 1) * self.batch_size):
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed((epoch_seed * 1_000_003 + worker * 10_000_019 + position) % (2**63))
                        batch.append(self.transform(decode_rgb(next(samples))))
                yield _stack(batch)

    def _samples(self, shards: list[str], keep, rng: random.Random):
        """Endless shuffled JPEG bytes of ``shards`` (every ``keep[1]``-th sample from ``keep[0]`` when
        workers share shards), through a shuffle buffer."""
        buffer: list[bytes] = []
        while True:
            found = False
            dataset = wds.WebDataset(
                shards, shardshuffle=False, nodesplitter=_same, workersplitter=_same, empty_check=False
            )
            for i, sample in enumerate(dataset):
                if keep is not None and i % keep[1] != keep[0]:
                    continue
                found = True
                buffer.append(sample["jpg"])
                if len(buffer) >= self.shuffle_buffer:
                    j = rng.randrange(len(buffer))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yield buffer.pop()
            if not found:
                raise ShardsNotFound(f"no samples in shards {shards}")


def _same(urls):
    return urls


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _stack(batch: list):
    if isinstance(batch[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*batch, strict=True))
    return torch.stack(batch)


def train_batches(
    shards: list[str],
    transform: Callable,
    batch_size: int,
    batches_per_epoch: int,
    workers: int,
    shuffle_buffer: int,
    seed: int,
    start_epoch: int = 0,
):
    """The whole run's training batches from one DataLoader over :class:`TrainStream`, exactly
    ``batches_per_epoch`` per epoch (the last workers' surplus batches of an epoch are dropped)."""
    stream = TrainStream(shards, transform, batch_size, batches_per_epoch, shuffle_buffer, seed, start_epoch)
    per_epoch = -(-batches_per_epoch // max(workers, 1)) * max(workers, 1)
    for position, batch in enumerate(_loader(stream, workers, seed)):
        if position % per_epoch < batches_per_epoch:
            yield batch


def _loader(stream: TrainStream, workers: int, seed: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),  # never draws from the training process's RNG
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        multiprocessing_context=_mp_context(workers),
    )


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
