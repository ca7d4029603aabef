"""Shards → embeddings → k-means / Sinkhorn / SeLa assignments → evaluation, on real CIFAR-10 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakelabel.cli import main
from lakelabel.data_specs.clusters import iter_assignments, read_assignments, validate_assignments
from lakelabel.data_specs.embeddings import read_embeddings
from lakelabel.data_specs.manifest import read_manifest
from lakelabel.data_specs.validation import ContractError
from lakelabel.pipeline.cluster import cluster
from lakelabel.pipeline.config import ClusterConfig, EmbedConfig, IngestConfig
from lakelabel.pipeline.embed import embed, load_encoder
from lakelabel.pipeline.encoders import CheckpointError
from lakelabel.pipeline.evaluate import evaluate_clusters
from lakelabel.pipeline.ingest import run_ingest
from tests.roots import copy_root


def test_embed_parts_follow_the_contract_and_resume(cifar_root, tmp_path) -> None:
    src, _, lake = cifar_root
    root = tmp_path / "root"
    copy_root(src, root)
    config = EmbedConfig(encoder="tiny", workers=0, batch_size=64)
    first = embed(root, config)
    assert first["shards"] == 4 and first["shards_embedded"] == 4 and first["images_embedded"] == 400
    emb = read_embeddings(first["embeddings"])
    manifest = read_manifest(root).to_pandas()
    assert sorted(emb.keys) == sorted(manifest[manifest.status == "sharded"].key)
    assert emb.meta["dtype"] == "float16" and emb.meta["dim"] == 512 and emb.meta["image_size"] == 32
    matrix = emb.matrix()
    assert matrix.shape == (400, 512)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=2e-3)

    assert embed(root, config)["shards_embedded"] == 0  # re-run: nothing to do

    # a crash after the matrix but before the marker: the part is uncommitted and redone
    out = Path(first["embeddings"])
    before = np.load(out / "emb-000001.npy")
    (out / "emb-000001.parquet").unlink()
    (out / ".emb-000002.npy.tmp").write_bytes(b"partial")
    again = embed(root, config)
    assert again["shards_embedded"] == 1 and again["images_embedded"] == 100
    assert np.array_equal(np.load(out / "emb-000001.npy"), before)  # deterministic
    assert not list(out.glob(".*.tmp"))

    # a task embedding other shards leaves this shard's uncommitted part alone (tasks run side by side)
    (out / "emb-000003.parquet").unlink()
    (out / ".emb-000003.npy.99-1.tmp").write_bytes(b"in flight")
    assert embed(root, config, shards=["shard-000000.tar"])["shards_embedded"] == 0
    assert (out / "emb-000003.npy").exists() and (out / ".emb-000003.npy.99-1.tmp").exists()
    assert embed(root, config, shards=["shard-000003.tar"])["shards_embedded"] == 1
    assert not list(out.glob(".*.tmp"))

    # incremental: new images → one new shard → only it is embedded
    extra = tmp_path / "more"
    for i, path in enumerate(sorted(lake.rglob("*.jpg"))[:30]):
        from PIL import Image

        target = extra / f"flipped-{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target, quality=95)
    run_ingest(str(extra), root, IngestConfig(workers=0, shard_max_count=100))
    incremental = embed(root, config)
    assert incremental["shards_embedded"] == 1 and incremental["images_embedded"] == 30
    assert read_embeddings(first["embeddings"]).n == 430

    # another image size would mix incompatible rows: refused with the reason
    with pytest.raises(ValueError, match="other settings"):
        embed(root, EmbedConfig(encoder="tiny", workers=0, image_size=24))


def test_encoder_errors_are_named(cifar_root) -> None:
    root, _, _ = cifar_root
    with pytest.raises(CheckpointError, match="finished runs: tiny"):
        embed(root, EmbedConfig(encoder="nope"))
    weights = root / "checkpoints" / "tiny" / "encoder.pt"
    with pytest.raises(ValueError, match="needs --backbone and --stem"):
        embed(root, EmbedConfig(encoder=str(weights)))
    with pytest.raises(CheckpointError, match="matches only"):
        load_encoder(root, EmbedConfig(encoder=str(weights), backbone="resnet34", stem="imagenet"))
    with pytest.raises(ValueError, match="unknown dtype"):
        embed(root, EmbedConfig(encoder="tiny", dtype="int8"))


def test_cluster_assignments_and_eval(cifar_root, tmp_path) -> None:
    src, truth, _ = cifar_root
    root = tmp_path / "root"
    copy_root(src, root)
    embed(root, EmbedConfig(encoder="tiny", workers=0))
    config = ClusterConfig(k=10, sela={"heads": 2, "epochs": 3, "label_updates": 2, "batch_size": 64})
    summary = cluster(root, config)
    assert summary["skipped"] is False and summary["images"] == 400
    assert (
        summary["methods"]["kmeans"]["trained_on"] == 400
    )  # every point, not faiss's silent 256-per-centroid sample
    table = read_assignments(root)
    assert table.num_rows == 400 and table.column_names[:5] == [
        "key",
        "shard",
        "kmeans",
        "kmeans_similarity",
        "sinkhorn",
    ]
    for column in ("sinkhorn", "head_0", "head_1"):
        sizes = np.bincount(table.column(column).to_numpy(), minlength=10)
        assert sizes.min() >= 25 and sizes.max() <= 55, (column, sizes)  # equipartition: 40 each
    parts = sorted((root / "clusters" / "default" / "parts").iterdir())  # one per embeddings part
    assert [p.name for p in parts] == [
        "asg-000000.parquet",
        "asg-000001.parquet",
        "asg-000002.parquet",
        "asg-000003.parquet",
    ]
    assert all(pq.read_metadata(p).metadata[b"lakelabel.contract"] == b"clusters" for p in parts)
    assert [t.num_rows for t in iter_assignments(root)] == [100] * 4
    assert cluster(root, config)["skipped"] is True
    fewer = cluster(root, config.model_copy(update={"methods": ["kmeans", "scan"]}))
    assert fewer["skipped"] is False and list(fewer["methods"]) == ["kmeans", "scan"]
    assert read_assignments(root).column_names == [
        "key",
        "shard",
        "kmeans",
        "kmeans_similarity",
        "scan",
        "scan_confidence",
    ]
    cluster(root, config)

    result = evaluate_clusters(root, truth)
    assert result["evaluated"] == 400
    assert set(result["columns"]) == {"kmeans", "sinkhorn", "head_0", "head_1", "scan"}
    for scores in result["columns"].values():
        assert 0 < scores["acc"] <= 1 and -1 <= scores["ari"] <= 1 and 0 <= scores["nmi"] <= 1
        assert sum(c["size"] for c in scores["clusters"]) == 400

    bad = table.set_column(2, "kmeans", pa.array(np.full(400, 99, dtype=np.int32)))
    with pytest.raises(ContractError, match="outside"):
        validate_assignments(bad, k=10)
    with pytest.raises(ContractError, match="missing column"):
        validate_assignments(table.drop_columns(["kmeans_similarity"]))  # a method's columns come together


def test_cli_embed_cluster_eval(cifar_root, tmp_path, capsys) -> None:
    src, truth, _ = cifar_root
    root = tmp_path / "root"
    copy_root(src, root)
    assert main(["embed", str(root), "--encoder", "random", "--stem", "imagenet", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["encoder"] == "random0" and out["images_embedded"] == 400
    assert "embed: 400 of 400 images" in captured.err  # progress as plain lines off a terminal
    assert (
        main(
            ["cluster", str(root), "--k", "5", "--sela-heads", "1", "--sela-epochs", "1", "--run-name", "r5"]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["k"] == 5
    assert "cluster: assign: 4 of 4 parts" in captured.err  # one line per part off a terminal
    assert main(["eval", str(root), "--truth", str(truth), "--run", "r5"]) == 0
    printed = capsys.readouterr().out
    assert "| kmeans |" in printed and "| head_0 |" in printed and "400 of 400" in printed
    assert main(["eval", str(root), "--truth", str(truth), "--run", "missing"]) == 2
    assert "committed runs: r5" in capsys.readouterr().err
    assert main(["cluster", str(root), "--k", "1"]) == 2


def test_scan_can_update_the_encoder_on_the_shards(cifar_root, tmp_path) -> None:
    src, truth, _ = cifar_root
    root = tmp_path / "root"
    copy_root(src, root)
    embed(root, EmbedConfig(encoder="tiny", workers=0))
    scan = {"neighbours": 5, "heads": 1, "epochs": 3, "self_label_epochs": 2, "batch_size": 64}
    frozen = ClusterConfig(k=10, methods=["scan"], scan=scan)
    cluster(root, frozen)
    before = read_assignments(root).column("scan").to_numpy()
    update = {"encoder_epochs": 2.0, "encoder_batch_size": 32, "encoder_lr": 1e-3, "workers": 0}
    summary = cluster(root, ClusterConfig(k=10, methods=["scan"], scan=scan | update))
    record = summary["methods"]["scan"]["encoder_update"]
    assert record["encoder"] == "tiny" and record["encoder_steps"] == 25  # 2 passes over 400 images
    assert record["encoder_images"] == 25 * 32 and record["device"] == "cpu"
    assert record["encoder_loss_end"] < record["encoder_loss_start"]
    after = read_assignments(root).column("scan").to_numpy()
    assert len(after) == 400 and not np.array_equal(before, after)  # labels of the tuned features
    assert evaluate_clusters(root, truth)["columns"]["scan"]["acc"] > 0.1


def test_cluster_fits_a_bounded_sample_and_resumes_between_parts(cifar_root, tmp_path, monkeypatch) -> None:
    """The methods see ``cluster.sample`` rows, every image is assigned; a run killed after its first
    part leaves no commit, and its re-run keeps that part and writes the rest (the same labels)."""
    import lakelabel.pipeline.cluster as stage

    src, _, _ = cifar_root
    root = tmp_path / "root"
    copy_root(src, root)
    embed(root, EmbedConfig(encoder="tiny", workers=0))
    config = ClusterConfig(
        k=10, sample=150, methods=["kmeans", "sinkhorn", "sela"], sela={"heads": 1, "epochs": 2}
    )
    whole = cluster(root, config.model_copy(update={"run_name": "whole"}))
    assert whole["sample"] == 150 and whole["methods"]["kmeans"]["trained_on"] == 150
    assert sum(whole["cluster_sizes"]["sinkhorn"]) == 400 and min(whole["cluster_sizes"]["sinkhorn"]) >= 25

    written = []
    real_write = stage.atomic_write

    def dies_after_one_part(path, write):
        real_write(path, write)
        if path.parent.name == "parts":
            written.append(path.name)
            raise KeyboardInterrupt("killed between parts")

    monkeypatch.setattr(stage, "atomic_write", dies_after_one_part)
    with pytest.raises(KeyboardInterrupt):
        cluster(root, config.model_copy(update={"run_name": "killed"}))
    monkeypatch.setattr(stage, "atomic_write", real_write)
    with pytest.raises(FileNotFoundError, match="no committed cluster run 'killed'"):
        read_assignments(root, "killed")
    first = root / "clusters" / "killed" / "parts" / written[0]
    before = first.stat().st_mtime_ns
    (root / "clusters" / "killed" / ".sinkhorn-leftover").mkdir()  # a run killed inside a solve
    cluster(root, config.model_copy(update={"run_name": "killed"}))
    assert first.stat().st_mtime_ns == before  # kept, not rewritten
    assert not list((root / "clusters" / "killed").glob(".sinkhorn-*"))  # no scratch scores left
    assert read_assignments(root, "killed").equals(read_assignments(root, "whole"))
