"""UPS selection stage on real CIFAR-10 images: roles, seed labels, review queue round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lakelabel.cli import main
from lakelabel.pipeline.config import SelectConfig
from lakelabel.pipeline.labels import read_selection
from lakelabel.pipeline.select import select
from lakelabel.pipeline.truth import attach_keys
from tests.pipeline.conftest import clustered_copy
from tests.roots import copy_root


@pytest.fixture(scope="module")
def selection_root(cifar_root, tmp_path_factory):
    _, truth, _ = cifar_root
    root = clustered_copy(cifar_root, tmp_path_factory.mktemp("select"), heads=1, epochs=2)
    labels = pd.read_csv(truth)
    seed = labels.groupby("label").head(4)[["path", "label", "label_name"]]
    seed_csv = root.parent / "seed.csv"
    seed.to_csv(seed_csv, index=False)
    return root, truth, seed_csv


def small(**over) -> SelectConfig:
    base = dict(rounds=2, epochs=2, min_steps=30, passes=4, hidden=64, review_budget=30)
    base.update(over)
    return SelectConfig(**base)


def test_select_from_seed_labels_roles_metrics_review(selection_root) -> None:
    root, truth, seed_csv = selection_root
    summary = select(
        root, small(labels_from="seed", seed_labels=[str(seed_csv)], truth=str(truth), ups={"tau_p": 0.3})
    )
    table = read_selection(root)
    assert len(table) == 400 and table.key.is_unique
    assert summary["seed_labels_used"] == 40 and summary["classes"] == 10
    seeds = table[table.is_seed]
    assert len(seeds) == 40 and (seeds.role == "positive").all() and (seeds.confidence == 1).all()
    positives = table[table.role == "positive"]
    assert positives.label.notna().all() and positives.label_name.notna().all()
    assert table[table.role != "positive"].label.isna().all()
    negative_only = table[table.role == "negative_only"]
    assert all(len(n) > 0 for n in negative_only.negative_labels)
    assert all(len(n) == 0 for n in seeds.negative_labels)
    for _, row in positives[~positives.is_seed].iterrows():
        assert row.label not in row.negative_labels
    assert sum(summary["roles"].values()) == 400
    metrics = summary["metrics"]
    assert metrics["evaluated"] == 360  # truth for every non-seed image
    assert 0 <= metrics["accuracy_full_coverage"] <= 1 and 0 <= metrics["ece"] <= 1
    assert [p["coverage"] for p in metrics["precision_coverage_curve"]][-1] == 1.0
    # same-run baseline on the same embeddings and seeds; calibration measured before and after
    baseline = metrics["baseline_logreg"]
    assert 0 <= baseline["accuracy_full_coverage"] <= 1 and 0 <= baseline["precision_at_50pct_coverage"] <= 1
    assert all(r["temperature"] > 0 for r in summary["rounds"]) and 0 <= metrics["ece_uncalibrated"] <= 1
    # review queue: a batch of the review budget, with images enlarged to judge
    review = pd.read_csv(summary["review"]["csv"])
    assert len(review) == 30 and set(review.key) == set(table[table.role == "review"].key)
    assert not (table.set_index("key").loc[review.key].is_seed).any()
    for thumb in review.thumbnail:
        with Image.open(Path(summary["review"]["csv"]).parent / thumb) as im:
            assert max(im.size) == 224
    assert review.source_uri.notna().all() and review.label.isna().all() and review.answer.isna().all()
    # same seed → same selection
    select(root, small(labels_from="seed", seed_labels=[str(seed_csv)], ups={"tau_p": 0.3}, run_name="again"))
    again = read_selection(root, "again")
    assert again.role.tolist() == table.role.tolist() and np.allclose(again.confidence, table.confidence)


def test_reviewed_labels_come_back_as_seed_labels(selection_root) -> None:
    root, truth, seed_csv = selection_root
    first = select(root, small(labels_from="seed", seed_labels=[str(seed_csv)], run_name="r1"))
    review = pd.read_csv(first["review"]["csv"])
    truth_by_key = attach_keys(root, pd.read_csv(truth)).set_index("key")
    review["label"] = review.key.map(truth_by_key.label)
    review["label_name"] = review.key.map(truth_by_key.label_name)
    reviewed = root.parent / "reviewed.csv"
    review.to_csv(reviewed, index=False)
    second = select(
        root, small(labels_from="seed", seed_labels=[str(seed_csv), str(reviewed)], run_name="r2")
    )
    assert second["seed_labels_used"] == 40 + len(review)
    table = read_selection(root, "r2").set_index("key")
    back = table.loc[review.key]
    assert back.is_seed.all() and (back.role == "positive").all()
    assert back.label.tolist() == review.label.tolist()


def test_select_from_clusters_names_them_with_seed_labels(selection_root) -> None:
    root, truth, seed_csv = selection_root
    summary = select(
        root, small(labels_from="clusters", seed_labels=[str(seed_csv)], truth=str(truth), run_name="c")
    )
    assert summary["classes"] == 10 and summary["seed_labels_used"] == 40
    assert len(summary["cluster_names"]) == 10 and isinstance(summary["unclaimed_clusters"], list)
    table = read_selection(root, "c")
    assert not table.is_seed.any()  # in this mode seed labels only name the clusters
    names = set(pd.read_csv(seed_csv).label_name)
    assert set(table.label_name.dropna()) <= names | {f"cluster_{i}" for i in range(10)}
    assert (
        summary["metrics"]["confidence_only_precision_at_equal_coverage"] is None
        or 0 <= summary["metrics"]["confidence_only_precision_at_equal_coverage"] <= 1
    )


def test_bad_options_and_cli(selection_root, capsys) -> None:
    root, _, seed_csv = selection_root
    with pytest.raises(ValueError, match="valid: ups, confidence"):
        select(root, small(method="magic"))
    with pytest.raises(ValueError, match="needs at least one seed-label CSV"):
        select(root, small(labels_from="seed"))
    with pytest.raises(ValueError, match="valid: kmeans, sinkhorn, head_0, scan"):
        select(root, small(cluster_column="head_9"))
    code = main(
        [
            "select",
            str(root),
            "--labels-from",
            "seed",
            "--seed-labels",
            str(seed_csv),
            "--rounds",
            "1",
            "--epochs",
            "1",
            "--passes",
            "2",
            "--method",
            "confidence",
            "--run-name",
            "cli",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "confidence" and out["rounds"][0]["negative_labels"] == 0


def test_undefined_metrics_are_null_not_perfect(selection_root) -> None:
    """The confidence rule makes no negative labels: their accuracy is undefined (None), not 1.0."""
    root, truth, seed_csv = selection_root
    summary = select(
        root,
        small(
            labels_from="seed",
            seed_labels=[str(seed_csv)],
            truth=str(truth),
            method="confidence",
            run_name="n",
        ),
    )
    metrics = summary["metrics"]
    assert metrics["negative_labels"] == 0 and metrics["negative_accuracy"] is None


def test_finetune_round_tunes_a_copy_and_reembeds_in_key_order(selection_root) -> None:
    import copy

    import torch

    from lakelabel.data_specs.embeddings import find_embeddings, read_embeddings
    from lakelabel.models.ups import DropoutClassifier, EncoderClassifier, TrainingLabels
    from lakelabel.pipeline.finetune import finetune_round, load_finetune_encoder
    from lakelabel.pipeline.training import reembed
    from lakelabel.pipeline.truth import read_seed_labels

    root, _, seed_csv = selection_root
    emb = read_embeddings(find_embeddings(root))
    config = small(finetune=True, finetune_steps=12, finetune_batch_size=16, workers=0, shuffle_buffer=0)
    encoder = load_finetune_encoder(root, emb, config)
    before = {k: v.clone() for k, v in encoder.module.state_dict().items()}
    # the untuned encoder re-embeds every image into the stored embeddings, row for row
    untouched = EncoderClassifier(
        copy.deepcopy(encoder.module), encoder.dim, DropoutClassifier(encoder.dim, 10)
    )
    stored = torch.from_numpy(emb.matrix()) * encoder.dim**0.5
    assert torch.allclose(
        reembed(untouched, emb, root, 32, 0, config.precision, torch.device("cpu")), stored, atol=0.05
    )

    seeds = read_seed_labels(root, [str(seed_csv)])
    row = {k: i for i, k in enumerate(emb.keys)}
    pos_idx = torch.as_tensor([row[k] for k in seeds.key])
    pos_labels = torch.as_tensor(seeds.label.to_numpy().astype("int64"))
    config = config.model_copy(update={"finetune_steps": 30, "finetune_lr": 1e-3, "lr": 1e-2})
    labels = TrainingLabels.positives_only(pos_idx, pos_labels, 10)
    result = finetune_round(root, emb, encoder, labels, 10, config, seed=0)
    record = result.record
    assert record["finetune_steps"] == 30 and record["finetune_images"] == 30 * 16
    assert record["finetune_loss_end"] < record["finetune_loss_start"]
    with torch.no_grad():  # the tuned encoder + head fit their 40 training images
        fitted = (result.head.eval()(result.features[pos_idx]).argmax(1) == pos_labels).float().mean()
    assert fitted >= 0.5
    assert result.features.shape == stored.shape
    assert torch.allclose(result.features.norm(dim=1), torch.full((emb.n,), encoder.dim**0.5), atol=1e-3)
    assert (result.features - stored).abs().max() > 0.1  # the encoder moved ...
    assert all(torch.equal(v, before[k]) for k, v in encoder.module.state_dict().items())  # ... a copy of it

    other = root.parent / "other-encoder.pt"
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in before.items()}, other)
    with pytest.raises(ValueError, match="did not make the embeddings"):
        load_finetune_encoder(root, emb, small(finetune=True, finetune_encoder=str(other)))
    with pytest.raises(ValueError, match="unknown precision"):
        load_finetune_encoder(root, emb, small(finetune=True, precision="fp8"))


def test_select_with_finetune_from_the_cli(selection_root, capsys) -> None:
    root, truth, seed_csv = selection_root
    argv = ["select", str(root), "--labels-from", "seed", "--seed-labels", str(seed_csv), "--rounds", "2"]
    argv += ["--epochs", "1", "--passes", "3", "--ups-tau-p", "0.3", "--finetune", "--finetune-steps", "2"]
    argv += ["--finetune-batch-size", "16", "--workers", "0", "--truth", str(truth), "--run-name", "tuned"]
    assert main(argv) == 0
    summary = json.loads((root / "selections" / "tuned" / "summary.json").read_text())
    assert summary["config"]["finetune"] and summary["thresholds"]["finetune"]
    assert [r["finetune_steps"] for r in summary["rounds"]] == [2, 2]
    assert all(r["device"] == "cpu" and r["reembed_seconds"] >= 0 for r in summary["rounds"])
    assert summary["rounds"][1]["trained_on_positives"] >= 40  # round 2 trains on round 1's selection
    table = read_selection(root, "tuned")
    assert len(table) == 400 and table.key.is_unique and table.is_seed.sum() == 40
    assert summary["metrics"]["evaluated"] == 360


def test_seed_csv_mistakes_are_named_not_swallowed(selection_root, tmp_path) -> None:
    """A class name in `label`, two names for one id, rows matching no image: one clear message each."""
    from lakelabel.pipeline.truth import read_seed_labels

    root, _, seed_csv = selection_root
    seeds = pd.read_csv(seed_csv)
    names = seeds.assign(label=seeds.label_name)
    names.to_csv(tmp_path / "names.csv", index=False)
    with pytest.raises(ValueError, match=r"names.csv', row 2: column 'label' must hold integer class ids"):
        read_seed_labels(root, [tmp_path / "names.csv"])
    clash = seeds.copy()
    clash.loc[clash.index[1], "label_name"] = "something-else"
    clash.loc[clash.index[1], "label"] = clash.label.iloc[0]
    clash.to_csv(tmp_path / "clash.csv", index=False)
    with pytest.raises(ValueError, match="has several label_names"):
        read_seed_labels(root, [tmp_path / "clash.csv"])
    extra = pd.concat([seeds, seeds.head(2).assign(path=["nowhere/a.jpg", "nowhere/b.jpg"])])
    extra.to_csv(tmp_path / "extra.csv", index=False)
    with pytest.warns(UserWarning, match="2 of 42 rows match no ingested image"):
        assert len(read_seed_labels(root, [tmp_path / "extra.csv"])) == 40


def test_cross_fit_calibration_never_lets_a_chain_see_its_held_out_seeds() -> None:
    """Each fold's chain of rounds trains on the other seeds and on pseudo-labels it selected itself,
    never on its held-out rows; the temperature comes from those rows."""
    import torch

    from lakelabel.models.scan import mine_neighbours
    from lakelabel.pipeline.select import CrossFit
    from lakelabel.pipeline.selection import RULES
    from tests.models.test_kmeans import blobs

    unit, truth = blobs(60, 4, dim=16, spread=0.3, seed=3)
    x = torch.from_numpy(unit) * 4.0
    neighbours = torch.from_numpy(mine_neighbours(unit, 5))
    rows = torch.cat([torch.nonzero(torch.from_numpy(truth) == c).squeeze(1)[:10] for c in range(4)])
    targets = torch.from_numpy(truth)[rows]
    seed_labels = torch.full((len(unit),), -1, dtype=torch.long).index_copy_(0, rows, targets)
    config = small(labels_from="seed", ups={"tau_p": 0.4, "kappa_p": 1.0})
    cross_fit = CrossFit.start(rows, targets, len(unit), 4, seed=0)
    assert len(cross_fit.folds) == 5 and sorted(torch.cat(cross_fit.folds).tolist()) == list(range(40))
    for r in range(2):
        temperature = cross_fit.round(x, neighbours, RULES["ups"](config.ups), seed_labels, 4, config, r)
        assert 0.05 <= temperature <= 20
        for chain, fold in zip(cross_fit.chains, cross_fit.folds, strict=True):
            held = set(rows[fold].tolist())
            assert len(chain.pos_idx) > 32  # its 32 seeds and pseudo-labels
            assert held.isdisjoint(chain.pos_idx.tolist()) and held.isdisjoint(chain.neg_idx.tolist())


def test_select_checks_every_input_before_its_work(selection_root, tmp_path, capsys) -> None:
    """A missing manifest, cluster run, seed or truth CSV fails at once, named (it once failed after
    34 minutes of work, at the review queue)."""
    import time

    root, truth, seed_csv = selection_root
    bare = tmp_path / "root"
    copy_root(root, bare, "manifest", "selections")
    started = time.perf_counter()
    assert main(["select", str(bare)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no ingest manifest under" in err, err
    assert time.perf_counter() - started < 10
    copy_root(root / "manifest", bare / "manifest")
    cases = {
        ("--cluster-run", "nope"): "no cluster run 'nope'",
        ("--seed-labels", str(tmp_path / "none.csv")): "seed-label CSV not found",
        ("--truth", str(tmp_path / "none.csv")): "truth CSV not found",
    }
    for flags, message in cases.items():
        assert main(["select", str(bare), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (bare / "selections").exists()


def test_auto_cluster_column_takes_what_the_cluster_run_has(selection_root, tmp_path) -> None:
    """Clusters from k-means alone: `auto` picks `kmeans` (it once picked a missing `head_0`)."""

    from lakelabel.pipeline.cluster import cluster
    from lakelabel.pipeline.config import ClusterConfig

    root = tmp_path / "root"
    copy_root(selection_root[0], root, "clusters", "selections")
    cluster(root, ClusterConfig(k=10, methods=["kmeans"]))
    summary = select(root, small(rounds=1))
    assert summary["cluster_column"] == "kmeans" and summary["classes"] == 10


def test_a_working_sample_smaller_than_the_lake_still_selects_every_image(selection_root) -> None:
    """sample=150 of 400 images (4 parts): the rounds see the sample and every seed; the other rows are
    selected part by part with the last classifier and neighbours in the sample; the labels stay close
    to those of the run that saw the whole lake."""
    root, truth, seed_csv = selection_root
    base = small(
        labels_from="seed", seed_labels=[str(seed_csv)], truth=str(truth), ups={"tau_p": 0.2}, calibrate=False
    )
    whole = select(root, base.model_copy(update={"run_name": "whole"}))
    part = select(root, base.model_copy(update={"run_name": "part", "sample": 150}))
    assert whole["working_sample"] == 400 and 150 <= part["working_sample"] <= 190  # + the 40 seeds
    table = read_selection(root, "part")
    assert len(table) == 400 and table.key.is_unique and table.is_seed.sum() == 40
    assert part["metrics"]["evaluated"] == 360 and sum(part["roles"].values()) == 400
    assert (table.role == "review").sum() == 30
    outside = table[~table.is_seed & (table.role == "positive")]
    assert len(outside) and outside.label.notna().all()
    for name in ("accuracy_full_coverage", "precision_at_50pct_coverage"):
        assert part["metrics"][name] >= whole["metrics"][name] - 0.1, (name, part["metrics"], whole)
    # clusters train: the sample is class-balanced over the cluster labels (each cluster capped alike)
    from lakelabel.data_specs.clusters import read_assignments
    from lakelabel.pipeline.select.stage import balanced_quota

    balanced = select(root, small(sample=100, run_name="balanced", review_budget=0))
    counts = np.bincount(read_assignments(root).column(balanced["cluster_column"]).to_numpy(), minlength=10)
    assert balanced_quota(counts, 100) <= counts.max() and 60 <= balanced["working_sample"] <= 140
    assert balanced_quota(np.array([5, 50, 500]), 105) == 50.0


def test_selection_parts_survive_a_kill_between_parts_and_resume(selection_root) -> None:
    """Killed after 2 of 4 parts: no commit, the 2 parts stay; the re-run keeps them (same seeded fit)
    and writes the rest; the result equals an uninterrupted run's."""
    from lakelabel.data_specs.layout import Layout
    from lakelabel.data_specs.selections import iter_selection

    root, _, seed_csv = selection_root
    config = small(labels_from="seed", seed_labels=[str(seed_csv)], sample=150, run_name="killed")

    def kill(record: dict) -> None:
        if record.get("selected_parts") == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        select(root, config, log=kill)
    paths = Layout(root).selections("killed")
    assert not paths.committed and len(list(paths.parts.glob("sel-*.parquet"))) == 2
    with pytest.raises(FileNotFoundError, match="no committed selection run 'killed'"):
        read_selection(root, "killed")
    resumed = select(root, config)
    assert resumed["parts_reused"] == 2 and paths.committed
    fresh = select(root, config.model_copy(update={"run_name": "unkilled"}))
    assert fresh["parts_reused"] == 0 and fresh["state_sha256"] == resumed["state_sha256"]
    assert read_selection(root, "killed").equals(read_selection(root, "unkilled"))
    parts = list(iter_selection(root, "killed"))
    assert [p.num_rows for p in parts] == [100] * 4
