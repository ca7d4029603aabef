"""SCAN (Van Gansbeke et al., ECCV 2020, "SCAN: Learning to Classify Images without Labels") on frozen
embeddings: mined nearest neighbours, heads trained for neighbour consistency + entropy, then
self-labelling on confident samples (``models/scan.py``). Runs on a CPU.

With ``encoder_epochs`` > 0 (meant for GPUs) the encoder that made the embeddings is updated too
(SCAN §3.2 trains backbone and head together): after the frozen heads, the chosen head and a copy of
the encoder train on augmented images streamed from the shards with the SCAN loss, each anchor
against one mined neighbour's latest prediction from a memory bank (the lake need not fit in
memory, nor its neighbours in one batch); every image is then re-embedded with the tuned encoder and
self-labelling runs on those features."""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from lakelabel.data_specs.layout import Layout
from lakelabel.pipeline.checks import PRECISIONS, choice
from lakelabel.pipeline.clustering.base import ClusteringMethod, ClusterInputs, MethodOutput, MethodSettings


class ScanSettings(MethodSettings):
    neighbours: int = Field(20, gt=0, description="nearest neighbours mined per image (FAISS, cosine)")
    heads: int = Field(5, gt=0, description="SCAN heads trained; the lowest-loss one is kept")
    hidden: int = Field(0, ge=0, description="0 = linear heads, else an MLP with this hidden width")
    epochs: int = Field(60, ge=0, description="SCAN-loss epochs")
    entropy_weight: float = Field(5.0, ge=0, description="weight of the cluster-entropy term (SCAN: 5)")
    self_label_epochs: int = Field(10, ge=0, description="self-labelling epochs (0: none)")
    threshold: float = Field(
        0.99, gt=0, lt=1, description="self-labelling: confident when max probability ≥ this"
    )
    feature_dropout: float = Field(0.25, ge=0, lt=1, description="input dropout while self-labelling")
    batch_size: int = Field(512, gt=0, description="rows per head-training step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the heads")
    encoder_epochs: float = Field(
        0.0,
        ge=0,
        description="passes over the lake that update the encoder with the SCAN loss (GPU); 0: frozen",
    )
    encoder_lr: float = Field(1e-5, gt=0, description="AdamW learning rate of the encoder update")
    encoder_batch_size: int = Field(128, gt=1, description="images per step of the encoder update")
    workers: int = Field(2, ge=0, description="decode workers of the encoder update and re-embedding")
    precision: choice("scan.precision", PRECISIONS) = Field(
        "auto", description="auto (bf16 on CUDA) | fp32 | bf16 (encoder update)"
    )


_HEAD_ONLY = {
    "neighbours",
    "batch_size",
    "encoder_epochs",
    "encoder_lr",
    "encoder_batch_size",
    "workers",
    "precision",
}


class Scan(ClusteringMethod):
    name = "scan"
    Settings = ScanSettings
    by_default = True

    def columns(self) -> list[tuple[str, str]]:
        return [("scan", "label"), ("scan_confidence", "score")]

    def run(self, inputs: ClusterInputs) -> MethodOutput:
        import torch

        from lakelabel.models.scan import mine_neighbours, predict, self_label, train_scan

        s = self.settings
        if s.neighbours >= inputs.n:
            raise ValueError(f"scan.neighbours={s.neighbours} needs more than {s.neighbours} embedded images")
        if s.encoder_epochs and (inputs.emb is None or inputs.root is None):  # fail before any training
            raise ValueError(
                "scan.encoder_epochs > 0 needs the lake's shards: run it with `lakelabel cluster`"
            )
        if s.encoder_epochs and inputs.n != inputs.lake_rows:
            raise ValueError(
                f"scan.encoder_epochs > 0 trains on every image: cluster.sample={inputs.n} is below the "
                f"lake's {inputs.lake_rows} rows (raise it, or leave the encoder frozen)"
            )
        neighbours = mine_neighbours(inputs.x, s.neighbours)
        x = torch.from_numpy(inputs.x) * float(np.sqrt(inputs.x.shape[1]))  # coordinates of order 1
        settings = s.model_dump(exclude=_HEAD_ONLY)
        if s.encoder_epochs:
            settings["self_label_epochs"] = 0  # after the encoder update, on its features
        batch_size = min(s.batch_size, inputs.n)
        seed = inputs.config.seed
        scan = train_scan(
            x,
            torch.from_numpy(neighbours),
            inputs.k,
            **settings,
            batch_size=batch_size,
            seed=seed,
            log=inputs.log,
        )
        summary: dict = {"head": scan.head, "history": scan.history}
        head = scan.model.eval()
        scale = float(np.sqrt(inputs.x.shape[1]))

        def assign(x: np.ndarray, start: int) -> dict[str, np.ndarray]:
            labels, confidence = predict(head, torch.from_numpy(x) * scale)
            return {"scan": labels.numpy().astype(np.int32), "scan_confidence": confidence.numpy()}

        if s.encoder_epochs:
            features, summary["encoder_update"] = _update_encoder(inputs, x, scan.model, neighbours, s)
            gen = torch.Generator().manual_seed(seed)
            head = scan.model.train()
            self_label(
                head,
                features,
                inputs.k,
                s.self_label_epochs,
                s.threshold,
                s.feature_dropout,
                batch_size,
                s.lr,
                1e-4,
                gen,
                scan.history,
                inputs.log,
            )
            head.eval()

            def assign(x: np.ndarray, start: int) -> dict[str, np.ndarray]:  # noqa: F811 - the tuned one
                # the re-embedded lake is in memory (an N-row exception; encoder_epochs is a GPU option)
                labels, confidence = predict(head, features[start : start + len(x)])
                return {"scan": labels.numpy().astype(np.int32), "scan_confidence": confidence.numpy()}

        return MethodOutput(assign, summary, {"scan_head": scan.model.state_dict()})


def _update_encoder(inputs: ClusterInputs, x, head, neighbours: np.ndarray, s: ScanSettings):
    """Train a copy of the embeddings' encoder + ``head`` with the SCAN loss against a memory bank of
    predictions (initialised from ``head`` on the frozen embeddings ``x``, unit norm × √dim); returns the
    re-embedded features ``(N, dim)`` (unit norm × √dim, the embeddings' row order) and a record."""
    import copy

    import torch

    from lakelabel.models.scan import probabilities, scan_loss
    from lakelabel.models.ups import EncoderClassifier
    from lakelabel.pipeline.augment import classifier_transform
    from lakelabel.pipeline.devices import compute_device
    from lakelabel.pipeline.shard_data import KeyedShards
    from lakelabel.pipeline.training import embedding_encoder, reembed, train_steps, training_record

    emb, root = inputs.emb, inputs.root
    dev = compute_device(None)
    encoder = embedding_encoder(root, emb)
    seed = inputs.config.seed
    torch.manual_seed(seed)
    bank = probabilities(head, x)  # (N, K), on the CPU
    model = EncoderClassifier(copy.deepcopy(encoder.module), encoder.dim, head).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    row_of = {key: i for i, key in enumerate(emb.keys)}
    data = KeyedShards(
        [str(Layout(root).shard(name)) for name in sorted(set(emb.shards))],
        {key: (-1, [], 1.0) for key in emb.keys},
        [],
        transform=classifier_transform(encoder.image_size, encoder.mean, encoder.std),
        shuffle=2000,
        seed=seed,
        repeat=True,
    )
    near = torch.from_numpy(neighbours)
    gen = torch.Generator().manual_seed(seed)

    def loss_of(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        rows = torch.as_tensor([row_of[key] for key in batch["key"]])
        picked = near[rows, torch.randint(0, near.shape[1], (len(rows),), generator=gen)]
        target = bank[picked].clamp_min(1e-8).log().to(logits.device)  # softmax(log q) = q
        bank[rows] = torch.softmax(logits.detach(), 1).cpu()
        return scan_loss(logits, target, s.entropy_weight)[0]

    steps = max(1, round(s.encoder_epochs * emb.n / s.encoder_batch_size))
    groups = [
        {"params": model.backbone.parameters(), "lr": s.encoder_lr},
        {"params": model.head.parameters(), "lr": s.lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    workers = min(s.workers, len(set(emb.shards)))  # a worker without a shard would wait forever
    started = time.perf_counter()
    log = (lambda r: inputs.log({"scan_encoder": r})) if inputs.log else None
    losses = train_steps(
        model,
        data.loader(s.encoder_batch_size, workers),
        steps,
        optimizer,
        loss_of,
        s.precision,
        dev,
        log,
        # batch statistics of a CPU-sized batch moved the features: ACC 0.49 → 0.39
        keep_norm_statistics=True,
    )
    seconds = time.perf_counter() - started
    features = reembed(model, emb, root, 2 * s.encoder_batch_size, workers, s.precision, dev)
    model.head.cpu()
    record = training_record("encoder", losses, s.encoder_batch_size, seconds) | {
        "encoder": encoder.name,
        "reembed_seconds": round(time.perf_counter() - started - seconds, 1),
        "device": str(dev),
    }
    return features, record
