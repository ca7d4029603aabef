"""Self-supervised pretraining of an encoder from ingest shards.

Writes ``ROOT/checkpoints/<run_name>/``: ``last.pt`` (full training state, atomic, every N steps;
a re-run resumes from it exactly), ``encoder.pt`` (backbone state dict: the input of embed) and
``summary.json``. Runs under ``torchrun`` for DDP (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.manifest import MANIFEST_SCHEMA
from lakelabel.models.backbones import build_with_preprocess, is_named
from lakelabel.models.knn import knn_predict
from lakelabel.models.optim import LARS, warmup_cosine
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes, file_sha256
from lakelabel.pipeline.augment import BatchViews, DecodeUint8, TwoViews, eval_transform, load_size
from lakelabel.pipeline.config import PretrainConfig
from lakelabel.pipeline.devices import autocast, compute_device
from lakelabel.pipeline.encoders import CheckpointError, init_backbone_from, pretrained_weights
from lakelabel.pipeline.shard_data import eval_loader, list_shards, train_batches
from lakelabel.pipeline.ssl import METHODS as SSL_METHODS
from lakelabel.pipeline.truth import attach_keys, read_label_csv


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def count_sharded(root: str | Path) -> int:
    table = pq.read_table(Layout(root).manifest, columns=["status"], schema=MANIFEST_SCHEMA)
    return table.column("status").to_pylist().count("sharded")


def _atomic_save(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


class Pretrainer:
    """Holds the model, optimiser and data for one pretraining run; :meth:`run` trains to the end."""

    def __init__(self, root: str | Path, config: PretrainConfig, device: str | None = None):
        self.root, self.config = Path(root), config
        self.entry = SSL_METHODS[config.method](getattr(config, config.method))  # its block, its views
        self.dist = setup_distributed()
        self.device = compute_device(device)
        self.shards = list_shards(self.root)
        n = count_sharded(self.root)
        world_batch = config.batch_size * self.dist.world
        if n < world_batch:
            raise ValueError(
                f"batch_size {config.batch_size} × {self.dist.world} process(es) exceeds the {n} images in "
                f"{self.root}"
            )
        self.steps_per_epoch = n // world_batch
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.warmup_steps = int(config.warmup_epochs * self.steps_per_epoch)
        self.base_lr = config.lr * world_batch / 256

        torch.manual_seed(config.seed)
        self.arch, self.small, self.pre, backbone, feat_dim = build_pretrain_backbone(config)
        self.init_report = None
        if config.init_from:
            named = is_named(config.init_from)
            weights = (
                pretrained_weights(config.init_from, config.init_weights, "--init-weights")
                if named
                else config.init_from
            )
            self.init_report = init_backbone_from(backbone, weights, complete=named)
            self.init_report |= {"weights": str(weights), "weights_sha256": file_sha256(weights)}
        self.method = self.entry.build(backbone, feat_dim, loss=config.loss).to(self.device)
        if config.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.model: torch.nn.Module = self.method
        if self.dist.world > 1:
            self.method = (
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
                if self.device.type == "cuda"
                else self.method
            )
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None
            )
        if config.compile:
            self.model = torch.compile(self.model)
        params: list = [p for p in self.method.parameters() if p.requires_grad]
        if config.init_from:  # adapt mode: the pretrained backbone learns at backbone_lr_scale × lr
            pretrained = {id(p) for p in self.method.backbone.parameters()}
            params = [
                {"params": [p for p in params if id(p) in pretrained], "lr_scale": config.backbone_lr_scale},
                {"params": [p for p in params if id(p) not in pretrained], "lr_scale": 1.0},
            ]
        if config.optimizer == "lars":
            self.optimizer = LARS(
                params, lr=self.base_lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=self.base_lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        self.ckpt = Layout(self.root).checkpoint(config.run_name)
        self.ckpt_dir = self.ckpt.dir
        self.step = 0
        self.steps_run = 0
        self.step_times: list[float] = []
        self.progress: Callable[[int, int], None] | None = None
        self.history: list[dict] = []
        self.device_augment = config.augment in ("auto", "device")  # batched kornia: faster on CPU too
        if self.device_augment:  # loaders only decode; the views are made batched on the device
            self.views = BatchViews(self.entry.views, self.pre.image_size, self.pre.mean, self.pre.std).to(
                self.device
            )
            self.transform = DecodeUint8(load_size(self.pre.image_size))
        else:
            self.transform = TwoViews(self.entry.views, self.pre.image_size, self.pre.mean, self.pre.std)

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": self.config.model_dump_json(),
            "history": json.dumps(self.history),
        }

    def save(self) -> None:
        if not self.dist.main:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.state(), self.ckpt.last)

    def resume(self) -> bool:
        """Load ``last.pt`` if present (weights_only); True when a run was resumed."""
        path = self.ckpt.last
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = PretrainConfig.model_validate_json(state["config"])
        for field in ("method", "loss", "backbone", "stem", "image_size", "batch_size", "init_from"):
            if getattr(saved, field) != getattr(self.config, field):
                raise CheckpointError(
                    f"{path} was trained with {field}={getattr(saved, field)!r}, not "
                    f"{getattr(self.config, field)!r}; "
                    "use another run_name"
                )
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        return True

    # -- training ----------------------------------------------------------------------------
    def train_steps(self, n_steps: int | None = None) -> list[float]:
        """Train until ``total_steps`` (or ``n_steps`` more); returns the losses of the steps run."""
        cfg, losses = self.config, []
        stop = self.total_steps if n_steps is None else min(self.total_steps, self.step + n_steps)
        self.model.train()
        if self.step >= stop:
            return losses
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        # one loader for the whole run; a resumed run restarts the stream at its epoch
        stream = train_batches(
            self.shards,
            self.transform,
            cfg.batch_size,
            self.steps_per_epoch,
            cfg.workers,
            cfg.shuffle_buffer,
            seed=cfg.seed,
            start_epoch=epoch,
        )
        for i, batch in enumerate(stream):
            if i < skip:
                continue  # replaying the epoch's exact data order up to the resume point
            if self.device_augment:
                images = batch.to(self.device, non_blocking=True)
                x1, x2 = self.views(images, seed=cfg.seed * 1_000_003 + self.step)
            else:
                x1, x2 = batch
            losses.append(self._step(x1, x2))
            if self.progress:
                self.progress(self.step, self.total_steps)
            if self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps:
                self.save()
            if self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps:
                self.end_epoch((self.step - 1) // self.steps_per_epoch, losses)
            if self.step >= stop:
                break
        return losses

    def _step(self, x1: torch.Tensor, x2: torch.Tensor) -> float:
        lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        mf = torch.channels_last if self.config.channels_last else torch.contiguous_format
        x1 = x1.to(self.device, non_blocking=True).contiguous(memory_format=mf)
        x2 = x2.to(self.device, non_blocking=True).contiguous(memory_format=mf)
        with autocast(self.config.precision, self.device):
            loss = self.model(x1, x2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.steps_run += 1
        self.step_times.append(time.perf_counter())
        self.method.after_step(self.step / self.total_steps)
        return float(loss.detach())

    def end_epoch(self, epoch: int, losses: list[float]) -> None:
        record = {"epoch": epoch, "step": self.step, "loss": losses[-1] if losses else None}
        if self.config.knn_labels and self.dist.main:
            record["knn_top1"] = self.knn_top1()
        self.history.append(record)
        self.save()

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def embed_keys(self, keys: set[str]) -> tuple[list[str], torch.Tensor]:
        self.method.backbone.eval()
        out_keys, feats = [], []
        loader = eval_loader(
            self.shards,
            eval_transform(self.pre.image_size, self.pre.mean, self.pre.std),
            256,
            self.config.workers,
            keys,
        )
        for images, batch_keys in loader:
            with autocast(self.config.precision, self.device):
                f = self.method.backbone(images.to(self.device))
            feats.append(f.float().cpu())
            out_keys.extend(batch_keys)
        self.method.backbone.train()
        return out_keys, torch.cat(feats) if feats else torch.empty(0, 1)

    def knn_top1(self) -> float:
        """kNN top-1 (k, T from the config) on the labeled set: train split as memory, test split as
        queries."""
        cfg = self.config
        labels = attach_keys(self.root, read_label_csv(cfg.knn_labels)).drop_duplicates("key")
        if "split" in labels.columns:
            train, test = labels[labels.split == "train"], labels[labels.split == "test"]
        else:
            test = labels.sample(frac=0.2, random_state=0)
            train = labels.drop(test.index)
        train = train.sample(n=min(len(train), cfg.knn_max_train), random_state=0)
        test = test.sample(n=min(len(test), cfg.knn_max_test), random_state=0)
        keys, feats = self.embed_keys(set(train.key) | set(test.key))
        index = {k: i for i, k in enumerate(keys)}
        label_of = dict(zip(labels.key, labels.label, strict=True))
        tr = [index[k] for k in train.key if k in index]
        te = [index[k] for k in test.key if k in index]
        y_tr = torch.tensor([label_of[keys[i]] for i in tr])
        y_te = torch.tensor([label_of[keys[i]] for i in te])
        pred = knn_predict(
            feats[tr], y_tr, feats[te], int(labels.label.max()) + 1, cfg.knn_k, cfg.knn_temperature
        )
        return round(float((pred == y_te).float().mean()), 4)

    def _steady_step_s(self) -> float | None:
        """Median seconds per step after the first quarter (loader start-up and warm-up excluded)."""
        times = self.step_times[len(self.step_times) // 4 :]
        if len(times) < 3:
            return None
        return round(statistics.median(b - a for a, b in itertools.pairwise(times)), 4)

    def finish(self, seconds: float) -> dict:
        summary = {
            "root": str(self.root),
            "run_name": self.config.run_name,
            "method": self.config.method,
            "loss": self.config.loss,
            "backbone": self.arch,
            "image_size": self.pre.image_size,
            "steps": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.dist.world,
            "device": str(self.device),
            "seconds": round(seconds, 2),
            "images_per_s": round(self.steps_run * self.config.batch_size * self.dist.world / seconds, 1)
            if seconds
            else None,
            "steady_step_s": self._steady_step_s(),
            "history": self.history,
            "init_from": self.init_report,
            "encoder": str(self.ckpt.encoder),
        }
        if self.dist.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            _atomic_save(self.method.backbone.state_dict(), self.ckpt.encoder)
            cfg = self.config
            encoder_meta = {
                "backbone": self.arch,
                "small_stem": self.small,
                "image_size": self.pre.image_size,
                "mean": list(self.pre.mean),
                "std": list(self.pre.std),
                "init_from": cfg.init_from,
                "init_weights_sha256": (self.init_report or {}).get("weights_sha256"),
                "method": cfg.method,
                "loss": cfg.loss,
                "steps": self.step,
            }
            atomic_write_bytes(self.ckpt.meta, json.dumps(encoder_meta, indent=1).encode())
            atomic_write_bytes(self.ckpt.summary, json.dumps(summary, indent=1).encode())
        return summary


def build_pretrain_backbone(config: PretrainConfig):
    """``(architecture, small_stem, preprocess, module, dim)`` of a pretrain config: a named
    ``init_from`` (timm:/torchvision:) brings its own architecture and pretrained input size and
    normalisation; otherwise ``backbone`` with the small stem at ``image_size`` ≤ 64 (``stem: auto``)."""
    if config.init_from and is_named(config.init_from):
        module, dim, pre = build_with_preprocess(config.init_from, False, config.image_size)
        return config.init_from, False, pre, module, dim
    size = config.image_size or 32
    small = config.stem == "small" or (config.stem == "auto" and size <= 64)
    module, dim, pre = build_with_preprocess(config.backbone, small, size)
    return config.backbone, small, pre, module, dim


def pretrain(
    root: str | Path, config: PretrainConfig | None = None, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Train (or resume) the encoder described by ``config`` on ROOT's shards; returns a summary.
    ``progress(step, total_steps)`` is called after every step (on the main process)."""
    trainer = Pretrainer(root, config or PretrainConfig())
    trainer.progress = progress if trainer.dist.main else None
    resumed_at = trainer.step if trainer.resume() else None
    start = time.perf_counter()
    trainer.train_steps()
    summary = trainer.finish(time.perf_counter() - start)
    if resumed_at is not None:
        summary["resumed_from_step"] = resumed_at
    if trainer.dist.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
