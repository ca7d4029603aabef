"""Self-supervised pretraining of an encoder from ingest shards.

Writes ``ROOT/checkpoints/<run_name>/``: ``last.pt`` (full training state, atomic, every N steps;
a re-run resumes from it exactly), ``encoder.pt`` (backbone state dict: the input of embed) and
``summary.json``. Runs under ``torchrun`` for DDP (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from data_specs.manifest import MANIFEST_SCHEMA
from models.backbones import build_backbone
from models.knn import knn_predict
from models.methods import build_method
from models.optim import LARS, warmup_cosine
from pipeline.atomic import atomic_write, atomic_write_bytes
from pipeline.augment import TwoViews, eval_transform
from pipeline.config import PretrainConfig, check_choice
from pipeline.shard_data import eval_loader, list_shards, train_loader
from pipeline.truth import attach_keys, read_label_csv

OPTIMIZERS = ("sgd", "lars")
STEMS = ("auto", "small", "imagenet")
PRECISIONS = ("auto", "fp32", "bf16")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (missing, pickled code, no matching weights)."""


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


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a user's checkpoint with ``weights_only=True``; code inside is refused with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"refusing checkpoint {str(path)!r}: it is not a plain state dict (weights_only load failed: "
            f"{str(exc).splitlines()[0]})"
        ) from None
    for key in ("state_dict", "model", "backbone", "encoder"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no tensor state dict")
    return obj


def init_backbone_from(backbone: torch.nn.Module, path: str | Path) -> dict:
    """Copy matching weights of a user's checkpoint into ``backbone``; returns what matched."""
    state = load_state_dict_file(path)
    own = backbone.state_dict()
    cleaned = {}
    for name, tensor in state.items():
        for prefix in ("module.", "backbone.", "encoder.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name in own and own[name].shape == tensor.shape:
            cleaned[name] = tensor
    if not cleaned:
        raise CheckpointError(f"no tensor in {str(path)!r} matches the backbone's parameters")
    backbone.load_state_dict(cleaned, strict=False)
    return {"matched": len(cleaned), "backbone_tensors": len(own)}


def count_sharded(root: str | Path) -> int:
    table = pq.read_table(Path(root) / "manifest", columns=["status"], schema=MANIFEST_SCHEMA)
    return table.column("status").to_pylist().count("sharded")


def _atomic_save(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def compute_device(device: str | None = None) -> torch.device:
    """``device`` as given, else CUDA when present, else the CPU (every stage's default)."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _autocast(precision: str, device: torch.device):
    check_choice("precision", precision, PRECISIONS)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class Pretrainer:
    """Holds the model, optimiser and data for one pretraining run; :meth:`run` trains to the end."""

    def __init__(self, root: str | Path, config: PretrainConfig, device: str | None = None):
        self.root, self.config = Path(root), config
        check_choice("optimizer", config.optimizer, OPTIMIZERS)
        check_choice("stem", config.stem, STEMS)
        self.dist = setup_distributed()
        self.device = compute_device(device)
        self.shards = list_shards(self.root)
        n = count_sharded(self.root)
        world_batch = config.batch_size * self.dist.world
        if n < world_batch:
            raise ValueError(
                f"batch_size {config.batch_size} × {self.dist.world} process(es) exceeds the {n} images in {self.root}"
            )
        self.steps_per_epoch = n // world_batch
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.warmup_steps = int(config.warmup_epochs * self.steps_per_epoch)
        self.base_lr = config.lr * world_batch / 256

        torch.manual_seed(config.seed)
        small = config.stem == "small" or (config.stem == "auto" and config.image_size <= 64)
        backbone, feat_dim = build_backbone(config.backbone, small_images=small)
        self.init_report = init_backbone_from(backbone, config.init_from) if config.init_from else None
        self.method = build_method(config.method, backbone, feat_dim, loss=config.loss).to(self.device)
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
        params = [p for p in self.method.parameters() if p.requires_grad]
        if config.optimizer == "lars":
            self.optimizer = LARS(
                params, lr=self.base_lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=self.base_lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        self.ckpt_dir = self.root / "checkpoints" / config.run_name
        self.step = 0
        self.steps_run = 0
        self.step_times: list[float] = []
        self.history: list[dict] = []
        self.transform = TwoViews(config.method, config.image_size)

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
        _atomic_save(self.state(), self.ckpt_dir / "last.pt")

    def resume(self) -> bool:
        """Load ``last.pt`` if present (weights_only); True when a run was resumed."""
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = PretrainConfig.model_validate_json(state["config"])
        for field in ("method", "loss", "backbone", "stem", "image_size", "batch_size"):
            if getattr(saved, field) != getattr(self.config, field):
                raise CheckpointError(
                    f"{path} was trained with {field}={getattr(saved, field)!r}, not {getattr(self.config, field)!r}; "
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
        while self.step < stop:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            loader = train_loader(
                self.shards,
                self.transform,
                cfg.batch_size,
                self.steps_per_epoch,
                cfg.workers,
                cfg.shuffle_buffer,
                seed=cfg.seed * 100_003 + epoch,
            )
            for i, (x1, x2) in enumerate(loader):
                if i < skip:
                    continue  # replaying the epoch's exact data order up to the resume point
                losses.append(self._step(x1, x2))
                if self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps:
                    self.save()
                if self.step >= stop:
                    break
            if self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps:
                self.end_epoch(epoch, losses)
        return losses

    def _step(self, x1: torch.Tensor, x2: torch.Tensor) -> float:
        lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mf = torch.channels_last if self.config.channels_last else torch.contiguous_format
        x1 = x1.to(self.device, non_blocking=True).contiguous(memory_format=mf)
        x2 = x2.to(self.device, non_blocking=True).contiguous(memory_format=mf)
        with _autocast(self.config.precision, self.device):
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
            self.shards, eval_transform(self.config.image_size), 256, self.config.workers, keys
        )
        for images, batch_keys in loader:
            with _autocast(self.config.precision, self.device):
                f = self.method.backbone(images.to(self.device))
            feats.append(f.float().cpu())
            out_keys.extend(batch_keys)
        self.method.backbone.train()
        return out_keys, torch.cat(feats) if feats else torch.empty(0, 1)

    def knn_top1(self) -> float:
        """kNN top-1 (k, T from the config) on the labeled set: train split as memory, test split as queries."""
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
            "backbone": self.config.backbone,
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
            "encoder": str(self.ckpt_dir / "encoder.pt"),
        }
        if self.dist.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            _atomic_save(self.method.backbone.state_dict(), self.ckpt_dir / "encoder.pt")
            cfg = self.config
            encoder_meta = {
                "backbone": cfg.backbone,
                "small_stem": cfg.stem == "small" or (cfg.stem == "auto" and cfg.image_size <= 64),
                "image_size": cfg.image_size,
                "method": cfg.method,
                "loss": cfg.loss,
                "steps": self.step,
            }
            atomic_write_bytes(self.ckpt_dir / "encoder.json", json.dumps(encoder_meta, indent=1).encode())
            atomic_write_bytes(self.ckpt_dir / "summary.json", json.dumps(summary, indent=1).encode())
        return summary


def pretrain(root: str | Path, config: PretrainConfig | None = None) -> dict:
    """Train (or resume) the encoder described by ``config`` on ROOT's shards; returns a summary."""
    trainer = Pretrainer(root, config or PretrainConfig())
    trainer.resume()
    start = time.perf_counter()
    trainer.train_steps()
    summary = trainer.finish(time.perf_counter() - start)
    if trainer.dist.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
