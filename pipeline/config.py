"""Configuration models: the one place where defaults live.

The same objects are the CLI input (``--config file.yaml`` plus flags), the Prefect flow
parameters and the Prefect UI form. ``extra="forbid"`` everywhere: a misspelt key is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from lakelabel.pipeline.checks import PRECISIONS, STEMS, ConfigError, choice
from lakelabel.pipeline.clustering import METHODS
from lakelabel.pipeline.registry import block_fields
from lakelabel.pipeline.review import REVIEW_RULES
from lakelabel.pipeline.selection import RULES
from lakelabel.pipeline.ssl import METHODS as SSL_METHODS

#: the choices of the stages' own options (the registries' keys are choices too)
OPTIMIZERS = ("sgd", "lars")
AUGMENT = ("auto", "device", "loader")
PRETRAIN_STEMS = ("auto", *STEMS)
LOSSES = ("default", "wasserstein")
LABEL_SOURCES = ("clusters", "seed")
TRAIN_MODES = ("auto", "head", "finetune")
POSITIVE_LOSSES = ("ce", "smoothing", "gce")  # (models.losses.POSITIVE_LOSSES: config loads no torch)
NAMINGS = ("hungarian", "majority")


class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)


class IngestConfig(StrictModel):
    """Lake → WebDataset shards."""

    max_pixels: int = Field(
        89_478_485, gt=0, description="Reject images with more pixels (decompression bombs)."
    )
    max_side: int | None = Field(
        None, gt=0, description="Resize so the longer side is at most this many pixels."
    )
    jpeg_quality: int = Field(95, ge=1, le=100, description="Quality of re-encoded JPEGs.")
    shard_max_count: int = Field(5000, gt=0, description="Samples per shard at most.")
    shard_max_bytes: int = Field(512 * 2**20, gt=0, description="Bytes per shard at most.")
    workers: int | None = Field(None, ge=0, description="Decode processes; None = all cores, 0 = in-process.")
    batch_size: int = Field(256, gt=0, description="Files per unit of work sent to a worker.")
    compiled_core: bool = Field(
        True,
        description="Run local upright RGB JPEGs through the compiled core when it is built "
        "(same verdicts and bytes as the Python path, faster).",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the source (e.g. endpoint_url)."
    )
    flow_partition_size: int = Field(2048, gt=0, description="Files per mapped Prefect task in ingest_flow.")

    def resolve_flow_window(self) -> int:
        return self.resolved_workers() or 1

    def resolved_workers(self) -> int:
        if self.workers is None:
            return os.cpu_count() or 1
        return self.workers


class RunnerConfig(StrictModel):
    """How Prefect runs mapped tasks: local threads or processes, or a Dask cluster."""

    kind: str = Field("threads", description="threads | processes | dask")
    max_workers: int | None = Field(None, gt=0, description="Local threads/processes; None = all cores.")
    dask_address: str | None = Field(
        None, description="Dask scheduler address (tcp://host:8786); switches kind to dask."
    )

    def resolved_kind(self) -> str:
        kind = "dask" if self.dask_address else self.kind
        if kind not in RUNNER_KINDS:
            raise ConfigError(f"unknown task runner {kind!r}; valid: {', '.join(RUNNER_KINDS)}")
        return kind


RUNNER_KINDS = ("threads", "processes", "dask")


class _Pretrain(StrictModel):
    """Self-supervised encoder training from shards; each SSL method's own settings in its block."""

    method: choice("SSL method", SSL_METHODS) = Field(
        "simsiam", description="SSL method (registry pipeline/ssl): " + " | ".join(SSL_METHODS)
    )
    loss: choice("loss", LOSSES) = Field(
        "default", description="default | wasserstein (a sliced Wasserstein similarity)"
    )
    backbone: str = Field("resnet18", description="resnet18 | resnet34 | resnet50")
    image_size: int | None = Field(
        None,
        gt=0,
        description="Training crop size; None = 32, or the pretrained size with a named init_from.",
    )
    stem: choice("stem", PRETRAIN_STEMS) = Field(
        "auto",
        description="auto (small for image_size <= 64) | small (3x3 stride-1, no max-pool) | imagenet "
        "(7x7 stride-2 + max-pool: ~9x cheaper at 32 px, the fast CPU choice)",
    )
    batch_size: int = Field(256, gt=1, description="Per-process batch size.")
    epochs: int = Field(10, gt=0, description="Training epochs over the shards.")
    max_steps: int | None = Field(
        None, gt=0, description="Stop after this many steps (budgeted runs, tests)."
    )
    optimizer: choice("optimizer", OPTIMIZERS) = Field("sgd", description="sgd | lars")
    lr: float = Field(
        0.05, gt=0, description="Base learning rate for a total batch of 256 (scaled linearly)."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD/LARS momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear LR warm-up, in epochs.")
    workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    shuffle_buffer: int = Field(2000, gt=0, description="Sample shuffle buffer.")
    checkpoint_every: int = Field(200, gt=0, description="Steps between atomic checkpoints.")
    seed: int = Field(0, description="Seed of initialisation, augmentation and shuffling.")
    precision: choice("precision", PRECISIONS) = Field(
        "auto", description="auto (bf16 on CUDA) | fp32 | bf16"
    )
    augment: choice("augment", AUGMENT) = Field(
        "auto",
        description="auto = device | device (kornia, batched where the model runs, per-sample "
        "parameters; loaders only decode) | loader (torchvision per image in the loader workers)",
    )
    channels_last: bool = Field(
        True, description="channels_last memory format (faster convolutions on GPUs)."
    )
    compile: bool = Field(False, description="torch.compile the model (CUDA).")
    init_from: str | None = Field(
        None,
        description="Start from pretrained weights (adapt mode): timm:<model> or torchvision:<model> "
        "(its architecture replaces backbone/stem; weights from init_weights or the local cache), or a "
        "state-dict file for backbone.",
    )
    init_weights: str | None = Field(None, description="Weights file for a timm:/torchvision: init_from.")
    backbone_lr_scale: float = Field(
        0.1, gt=0, le=1, description="Learning-rate factor of the pretrained backbone (with init_from)."
    )
    knn_labels: str | None = Field(None, description="Label CSV (path,label[,split]) for the kNN monitor.")
    knn_k: int = Field(20, gt=0, description="kNN monitor: neighbours.")
    knn_temperature: float = Field(0.07, gt=0, description="kNN monitor: similarity temperature.")
    knn_max_train: int = Field(5000, gt=0, description="kNN monitor: labelled images used as memory.")
    knn_max_test: int = Field(2000, gt=0, description="kNN monitor: labelled images used as queries.")
    run_name: str = Field(
        "default", pattern=r"^[A-Za-z0-9_.-]+$", description="Folder under ROOT/checkpoints."
    )


PretrainConfig = create_model(
    "PretrainConfig", __base__=_Pretrain, __module__=__name__, **block_fields(SSL_METHODS, "SSL method")
)


class EmbedConfig(StrictModel):
    """Encoder over every shard → per-shard embedding matrices."""

    encoder: str = Field(
        "default",
        description="Pretrain run name under ROOT/checkpoints, timm:<model> or torchvision:<model> "
        "(pretrained, frozen; weights from --weights or the local cache), a state-dict file, or 'random'.",
    )
    weights: str | None = Field(None, description="Weights file of a timm:/torchvision: encoder.")
    backbone: str | None = Field(
        None,
        description="For a plain state-dict file: resnet18 | resnet34 | resnet50 | timm:<model> | "
        "torchvision:<model>.",
    )
    stem: choice("stem", STEMS) | None = Field(
        None, description="For a plain state-dict file: small | imagenet."
    )
    image_size: int | None = Field(
        None, gt=0, description="Input size; None = the encoder's training (or pretrained) size."
    )
    batch_size: int = Field(256, gt=0, description="Images per forward pass.")
    workers: int = Field(2, ge=0, description="DataLoader decode workers.")
    dtype: str = Field("float16", description="float16 | float32 (stored matrices).")
    flip_average: bool = Field(
        False,
        description="Test-time augmentation: each image's features averaged with its mirror image's "
        "(twice the encoder's work; its own embeddings folder, <encoder>-flip-<sha12>).",
    )
    precision: choice("precision", PRECISIONS) = Field(
        "auto", description="auto (bf16 on CUDA) | fp32 | bf16"
    )
    seed: int = Field(0, description="Seed of the 'random' encoder.")
    shards_per_task: int = Field(8, gt=0, description="Shards per mapped task in embed_flow.")
    parallel_tasks: int = Field(
        1, gt=0, description="embed_flow tasks in flight (one per GPU / Dask worker)."
    )


class _Cluster(StrictModel):
    """Clustering methods on the embeddings (registry: ``pipeline/clustering``), each with its own block."""

    k: int = Field(10, gt=1, description="Clusters per label column.")
    methods: list[choice("clustering method", METHODS)] = Field(
        default_factory=lambda: [name for name, method in METHODS.items() if method.by_default],
        description="Clustering methods to run, in order: " + " | ".join(METHODS),
    )
    target: list[float] | None = Field(
        None, description="Cluster proportions (K positive numbers) for lakes known to be imbalanced."
    )
    sample: int = Field(
        100_000,
        gt=1,
        description="The methods train on a seeded uniform sample of at most this many images (all of a "
        "smaller lake; memory: sample × dim × 4 bytes); Sinkhorn's label solves and the assignment of "
        "every image run part by part over the whole lake.",
    )
    seed: int = Field(0, description="Seed of the methods (a method with T heads uses seed + t for head t).")
    parts_per_task: int = Field(
        16, gt=0, description="Embeddings parts per mapped assignment task in cluster_flow."
    )
    run_name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="Folder under ROOT/clusters.")

    @field_validator("methods")
    @classmethod
    def _each_once(cls, methods: list[str]) -> list[str]:
        if not methods or len(set(methods)) != len(methods):
            raise ValueError(f"methods {methods!r}: need one or more of {', '.join(METHODS)}, each once")
        return methods


ClusterConfig = create_model(
    "ClusterConfig", __base__=_Cluster, __module__=__name__, **block_fields(METHODS, "clustering method")
)


class _Select(StrictModel):
    """UPS selection: a dropout classifier on the embeddings, M MC-dropout passes, R rounds; each
    selection rule's settings in its block."""

    labels_from: choice("labels_from", LABEL_SOURCES) = Field(
        "clusters", description="clusters (no human labels) | seed (seed-label CSVs)"
    )
    seed_labels: list[str] = Field(
        default_factory=list,
        description="CSVs with path or key, label[, label_name]: seed labels, reviewed labels; with "
        "labels_from=clusters they only name the clusters.",
    )
    cluster_run: str = Field("default", description="Run under ROOT/clusters (labels_from=clusters).")
    embeddings: str | None = Field(
        None, description="Encoder run / embeddings directory name; None = the cluster run's (or the newest)."
    )
    cluster_column: str = Field(
        "auto",
        description="auto (the strongest method the run has: scan, else head_0, sinkhorn, kmeans) | a label "
        "column of the cluster run (kmeans, sinkhorn, head_<t>, scan, …)",
    )
    naming: choice("naming", NAMINGS) = Field(
        "hungarian", description="Cluster → class naming with seed labels: hungarian | majority"
    )
    method: choice("selection rule method", RULES) = Field(
        "ups", description="Selection rule (registry pipeline/selection): " + " | ".join(RULES)
    )
    rounds: int = Field(3, gt=0, description="Selection rounds R (classifier re-initialised each round).")
    epochs: int = Field(20, gt=0, description="Classifier epochs per round.")
    min_steps: int = Field(400, gt=0, description="At least this many steps per round (small seed sets).")
    passes: int = Field(10, ge=2, description="MC-dropout passes M.")
    neg_temperature: float = Field(2.0, gt=0, description="Softmax temperature for negative selection.")
    hidden: int = Field(
        0, ge=0, description="Classifier hidden width; 0 = linear (dropout on the inputs), the best here."
    )
    neighbours: int = Field(
        10, ge=1, description="Nearest neighbours (FAISS, cosine) for neighbour smoothing."
    )
    neighbour_smoothing: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the neighbours' mean class probabilities in each image's (0 = off).",
    )
    calibrate: bool = Field(
        True,
        description="Temperature-scale each round's classifier on out-of-fold labelled rows (seed labels, "
        "else the cluster labels) before thresholding.",
    )
    dropout: float = Field(
        0.3, ge=0, lt=1, description="Dropout on the classifier inputs (MC-dropout passes keep it on)."
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="Adam weight decay.")
    batch_size: int = Field(256, gt=1, description="Rows per classifier step.")
    review: choice("review rule", REVIEW_RULES) = Field(
        "uncertain_diverse",
        description="Which images the review queue holds (registry pipeline/review): "
        + " | ".join(REVIEW_RULES),
    )
    review_budget: int = Field(
        100, ge=0, description="Images in the review queue (a batch under ROOT/batches); 0 = none."
    )
    reviewed_batches: bool = Field(
        True,
        description="Answered rows of every review batch under ROOT/batches join the seed labels "
        "(after seed_labels; the newest answer wins).",
    )
    thumbnail_size: int = Field(
        224, gt=0, description="Side of the review images, pixels (small images are enlarged)."
    )
    finetune: bool = Field(
        False,
        description="Full fine-tuning (meant for GPUs): each round trains the encoder and a fresh head end "
        "to end on the round's labels from the shards, then re-embeds every image; MC dropout on the head.",
    )
    finetune_encoder: str | None = Field(
        None,
        description="Encoder to fine-tune: a run under ROOT/checkpoints or a state-dict file; "
        "None = the one that made the embeddings (checked by sha256).",
    )
    finetune_steps: int = Field(500, gt=0, description="Fine-tuning steps per round.")
    finetune_batch_size: int = Field(128, gt=1, description="Images per fine-tuning step.")
    finetune_lr: float = Field(
        1e-4, gt=0, description="AdamW learning rate of the encoder (the head uses lr)."
    )
    workers: int = Field(2, ge=0, description="Decode workers for fine-tuning and re-embedding.")
    shuffle_buffer: int = Field(2000, ge=0, description="Sample shuffle buffer of the fine-tuning stream.")
    precision: choice("precision", PRECISIONS) = Field(
        "auto", description="auto (bf16 on CUDA) | fp32 | bf16 (fine-tuning)"
    )
    truth: str | None = Field(None, description="Ground-truth CSV, for evaluation only (never trains).")
    sample: int = Field(
        100_000,
        gt=1,
        description="The rounds train, calibrate and pick the review queue on a working sample of at most "
        "this many images plus every seed (class-balanced over the cluster labels with labels_from=clusters; "
        "all of a smaller lake; memory: sample × dim × 4 bytes); every other image is then selected part by "
        "part with the last round's classifier, its neighbours searched in the sample.",
    )
    parts_per_task: int = Field(
        16, gt=0, description="Embeddings parts per mapped selection task in select_flow."
    )
    seed: int = Field(0, description="Seed of training, dropout, fold splits and the working sample.")
    run_name: str = Field(
        "default", pattern=r"^[A-Za-z0-9_.-]+$", description="Folder under ROOT/selections."
    )


SelectConfig = create_model(
    "SelectConfig",
    __base__=_Select,
    __module__=__name__,
    **block_fields(RULES, "selection rule"),
    **block_fields(REVIEW_RULES, "review rule"),
)


class SuggestConfig(StrictModel):
    """Seeds to label first: TypiClust's cold-start choice (the most typical image of each of the
    largest clusters no labelled image covers) on the embeddings, written as a review batch."""

    budget: int = Field(100, gt=0, description="Images to suggest for a person to label.")
    seed_labels: list[str] = Field(
        default_factory=list,
        description="CSVs of images already labelled (path or key, label[, label_name]); their clusters "
        "count as covered, and they name the classes.",
    )
    classes: list[str] = Field(
        default_factory=list,
        description="Class names in id order (0, 1, …), for the review page's buttons; needed when no "
        "seed CSV names them.",
    )
    reviewed_batches: bool = Field(
        True,
        description="Images of earlier review batches: answered ones count as labelled, none is "
        "suggested again.",
    )
    embeddings: str | None = Field(
        None, description="Encoder run / embeddings directory name (default: the newest)."
    )
    sample: int = Field(
        200_000,
        ge=100,
        description="The choice is made on a uniform sample of at most this many images (memory bounded "
        "whatever the lake's size).",
    )
    neighbours: int = Field(20, ge=1, description="Typicality: 1 / mean distance to this many neighbours.")
    typicality_points: int = Field(
        5000, ge=10, description="Typicality within a cluster is estimated on at most this many points."
    )
    thumbnail_size: int = Field(224, gt=0, description="Side of the review images, pixels.")
    seed: int = Field(0, description="Seed of the sample and of k-means.")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Batch name under ROOT/batches (default: suggest-<sha8 of the chosen keys>).",
    )


class TrainClassifierConfig(StrictModel):
    """Retrain a classifier from a label run (SeLa's "label transfer"), with same-run baselines, and
    export it (TorchScript, ONNX, a model card)."""

    labels: str | None = Field(None, description="Label run id; None = the latest.")
    labels_dest: str | None = Field(None, description="Label lake URL; None = ROOT/labels.")
    classes: list[str] | None = Field(None, description="Class names to train on (default: all in the run).")
    mode: choice("mode", TRAIN_MODES) = Field(
        "auto",
        description="head: the encoder that made the embeddings stays frozen, a head trains on the stored "
        "embeddings (seconds on a CPU) | finetune: the whole network on the images, from the head "
        "(GPUs) | auto: finetune on a GPU or with init_from, else head",
    )
    head_hidden: int = Field(0, ge=0, description="Head: 0 = linear, else an MLP with this hidden width.")
    head_epochs: int = Field(30, gt=0, description="Head training epochs over the labelled rows.")
    head_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the head.")
    loss: choice("loss", POSITIVE_LOSSES) = Field(
        "ce",
        description="Positives' loss: ce | smoothing (label smoothing 0.1) | gce (generalised "
        "cross-entropy, noise-robust); negatives always get the negative-learning loss",
    )
    baselines: bool = Field(
        True,
        description="Also train the same head on the seed labels alone, and on the truth of the hold-out "
        "CSV's other rows (an oracle): the value of the pseudo-labels is (pseudo - seeds) / (oracle - seeds)",
    )
    export: bool = Field(True, description="Write model.ts (TorchScript), model.onnx and the model card.")
    backbone: str = Field(
        "resnet18", description="resnet18 | resnet34 | resnet50 (torchvision, from scratch)"
    )
    stem: choice("stem", STEMS) = Field(
        "imagenet", description="small | imagenet (the cheap one at 32 px on CPU)"
    )
    init_from: str | None = Field(
        None,
        description="Start from: timm:<model> | torchvision:<model> (pretrained; replaces backbone/stem), "
        "a pretrain run under ROOT/checkpoints, or a state-dict file for backbone.",
    )
    init_weights: str | None = Field(None, description="Weights file for a timm:/torchvision: init_from.")
    image_size: int | None = Field(None, gt=0, description="None = 32, or the size init_from was trained at.")
    epochs: int = Field(5, gt=0, description="Training epochs over the labelled images.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many steps (None: the epochs).")
    batch_size: int = Field(128, gt=1, description="Images per step.")
    lr: float = Field(0.1, gt=0, description="SGD learning rate (cosine schedule).")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay.")
    negative_weight: float = Field(1.0, ge=0, description="Weight of the negative-learning loss.")
    confidence_weighting: bool = Field(False, description="Weight each positive's loss by its confidence.")
    holdout: str | None = Field(
        None,
        description="Labeled CSV (path,label_name[,split]) to score the classifier on; its hold-out rows "
        "are never trained on.",
    )
    holdout_split: str | None = Field(
        "test", description="Hold out only the rows of this split, when the CSV has a split column."
    )
    holdout_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Hold out this seeded fraction of those rows (e.g. 0.2 of a plain truth CSV); None: all.",
    )
    workers: int = Field(2, ge=0, description="DataLoader decode workers.")
    shuffle_buffer: int = Field(2000, ge=0, description="Sample shuffle buffer.")
    precision: choice("precision", PRECISIONS) = Field(
        "auto", description="auto (bf16 on CUDA) | fp32 | bf16"
    )
    seed: int = Field(0, description="Seed of initialisation, augmentation and shuffling.")
    run_name: str = Field(
        "default", pattern=r"^[A-Za-z0-9_.-]+$", description="Folder under ROOT/classifiers."
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a clear error when the file is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {str(p)!r}")
    import yaml

    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return data


def validate_config(model: type[StrictModel], data: dict[str, Any], origin: str = "config") -> StrictModel:
    """Build ``model`` from ``data``; errors name the offending key and list the valid ones."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(
                f"{origin}: unknown option {loc!r}; valid options: {', '.join(model.model_fields)}"
            ) from None
        raise ConfigError(f"{origin}: {loc}: {first['msg']} (got {first.get('input')!r})") from None


class LakelabelConfig(StrictModel):
    """The whole run: where the lake is, where outputs go, and each stage's settings."""

    source: str | None = Field(
        None, description="Lake folder, fsspec URL or archive; None = the embedded demo lake."
    )
    root: str = Field(
        "lakelabel-demo/root", description="Output root: shards, manifest, checkpoints, labels."
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    pretrain: PretrainConfig | None = Field(
        default_factory=PretrainConfig,
        description="SSL pretraining; 'none' (or null) skips it: embed.encoder then names a pretrained "
        "encoder (timm:<model>, torchvision:<model>, a state-dict file).",
    )
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    reuse_encoder: bool = Field(
        True, description="Skip pretraining when the pretrain run already has an encoder (nightly runs)."
    )
    labels_dest: str | None = Field(None, description="Label lake URL; None = ROOT/labels.")

    @field_validator("pretrain", mode="before")
    @classmethod
    def _pretrain_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.lower() == "none" else value

    @model_validator(mode="after")
    def _encoder_without_pretrain(self) -> LakelabelConfig:
        if self.pretrain is None and self.embed.encoder == "default":
            raise ValueError(
                "pretrain: none needs embed.encoder naming a pretrained encoder "
                "(timm:<model>, torchvision:<model> or a state-dict file)"
            )
        return self


SECTIONS: dict[str, type[StrictModel]] = {
    "ingest": IngestConfig,
    "pretrain": PretrainConfig,
    "embed": EmbedConfig,
    "cluster": ClusterConfig,
    "select": SelectConfig,
    "runner": RunnerConfig,
}


def load_config(path: str | Path | None = None, **overrides: Any) -> LakelabelConfig:
    """``LakelabelConfig`` from a YAML file (or defaults) with top-level ``overrides`` applied."""
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    for section, model in SECTIONS.items():
        if isinstance(data.get(section), dict):
            validate_config(model, data[section], section)  # names the section's valid keys
    return validate_config(LakelabelConfig, data, str(path) if path else "config")
