"""The classifier users deploy: head and finetune modes with same-run baselines, the TorchScript and
ONNX exports (run by onnxruntime: the same predictions), the card's lineage, and predict's handling
of images it cannot read."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from lakelabel.cli import main
from lakelabel.data_specs.classifiers import PREPROCESSING_KEY, Preprocessing, read_card
from lakelabel.data_specs.labels import list_runs
from lakelabel.pipeline.config import POSITIVE_LOSSES, SelectConfig, TrainClassifierConfig
from lakelabel.pipeline.labels import publish_labels
from lakelabel.pipeline.predict import load_classifier, predict
from lakelabel.pipeline.select import select
from lakelabel.pipeline.train_classifier import train_classifier
from tests.roots import copy_root


@pytest.fixture(scope="module")
def seeded_root(selected_root, cifar_root, tmp_path_factory):
    """A CIFAR root with a seeded label run published, a hold-out CSV (a seeded half of the truth) and
    the truth's other half for the oracle."""
    _, truth, _ = cifar_root
    root = tmp_path_factory.mktemp("classifier") / "root"
    copy_root(selected_root, root, "labels")
    labels = pd.read_csv(truth)
    seed_csv = root.parent / "seed.csv"
    labels.groupby("label").head(4).to_csv(seed_csv, index=False)
    small = dict(rounds=1, epochs=2, min_steps=30, passes=3, hidden=0, review_budget=10, ups={"tau_p": 0.3})
    select(root, SelectConfig(labels_from="seed", seed_labels=[str(seed_csv)], run_name="seeded", **small))
    publish_labels(root, "seeded")
    return root, truth


def _config(truth, **over) -> TrainClassifierConfig:
    base = dict(holdout=str(truth), holdout_split=None, holdout_fraction=0.5, head_epochs=5, workers=0)
    return TrainClassifierConfig(**{**base, **over})


def test_head_mode_with_baselines_export_and_card(seeded_root) -> None:
    root, truth = seeded_root
    metrics = train_classifier(root, _config(truth))
    assert metrics["mode"] == "head" and metrics["steps"] > 0  # auto on a CPU: the head
    assert metrics["loss_end"] < metrics["loss_start"]
    held = metrics["holdout"]
    assert 150 <= held["images"] <= 200 and 0 < held["accuracy"] <= 1
    base = metrics["baselines"]
    assert base["seeds_only"]["rows"] > 0 and base["oracle"]["rows"] > 150  # the truth's other half
    assert base["oracle"]["images"] == base["seeds_only"]["images"] == held["images"]  # the same hold-out
    value = metrics["value_of_pseudo_labels"]
    expected = (held["accuracy"] - base["seeds_only"]["accuracy"]) / (
        base["oracle"]["accuracy"] - base["seeds_only"]["accuracy"]
    )
    assert value is None or value == pytest.approx(expected, abs=1e-3)
    # the export: the same predictions from torch and ONNX (onnxruntime), on the lake's images
    check = metrics["export"]
    assert check["images"] == 400 and check["top1_agreement"] == 1.0
    assert check["max_probability_difference"] <= 1e-4
    out = root / "classifiers" / "default"
    model, pre = load_classifier(out)
    assert list(pre.classes) == metrics["classes"] and pre.size == 32
    session = ort.InferenceSession(str(out / "model.onnx"))
    meta = Preprocessing.from_json(session.get_modelmeta().custom_metadata_map[PREPROCESSING_KEY])
    assert meta == pre
    images = torch.randint(0, 256, (5, 3, pre.size, pre.size), dtype=torch.uint8)
    with torch.no_grad():
        reference = model(images).numpy()
    answer = session.run(None, {"images": images.numpy()})[0]
    assert np.abs(reference - answer).max() <= 1e-4 and (reference.argmax(1) == answer.argmax(1)).all()
    np.testing.assert_allclose(reference.sum(1), 1, atol=1e-5)
    # the card names the label table, the Delta version and run it learned from, and the encoder
    card = read_card(out)
    (run,) = list_runs(str(root / "labels"))
    assert card["labels"]["run_id"] == run["run_id"] and card["labels"]["delta_version"] == run["version"]
    assert card["labels"]["table"] == str(root / "labels")
    assert card["encoder"]["sha256"] == run["encoder_sha256"]
    assert card["training"]["mode"] == "head" and card["metrics"]["holdout"]["accuracy"] == held["accuracy"]
    assert run["run_id"] in (out / "README.md").read_text()


def test_finetune_mode_starts_from_the_head(seeded_root) -> None:
    root, truth = seeded_root
    config = _config(truth, mode="finetune", max_steps=2, batch_size=16, baselines=False, run_name="ft")
    metrics = train_classifier(root, config)
    assert metrics["mode"] == "finetune" and metrics["finetune_steps"] == 2 and metrics["steps"] == 2
    assert metrics["holdout"]["images"] > 0 and metrics["export"]["top1_agreement"] == 1.0
    assert read_card(root / "classifiers" / "ft")["training"]["finetune_steps"] == 2


def test_the_losses_and_a_bad_request(seeded_root) -> None:
    from lakelabel.models.losses import POSITIVE_LOSSES as MODEL_LOSSES

    assert POSITIVE_LOSSES == MODEL_LOSSES
    root, truth = seeded_root
    for loss in ("gce", "smoothing"):
        config = _config(truth, loss=loss, baselines=False, export=False, run_name=loss)
        assert train_classifier(root, config)["holdout"]["accuracy"] > 0
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        TrainClassifierConfig(loss="focal")


def test_predict_files_folders_and_shards_and_lists_what_it_cannot_read(
    seeded_root, tmp_path, capsys
) -> None:
    root, truth = seeded_root
    model_dir = root / "classifiers" / "default"
    if not (model_dir / "model.ts").exists():
        train_classifier(root, _config(truth))
    shard = sorted((root / "shards").glob("shard-*.tar"))[0]
    folder = tmp_path / "images"
    folder.mkdir()
    with tarfile.open(shard) as tar:
        jpgs = [m for m in tar if m.name.endswith(".jpg")][:6]
        for m in jpgs:
            (folder / m.name).write_bytes(tar.extractfile(m).read())
    (folder / "notes.txt").write_text("not an image")
    (folder / "cut.jpg").write_bytes((folder / jpgs[0].name).read_bytes()[:100])
    out = tmp_path / "predictions.parquet"
    summary = predict(model_dir, [str(folder), str(shard)], out, batch_size=4, workers=0)
    table = pq.read_table(out).to_pandas()
    assert summary["images"] == 8 + 100 and summary["predicted"] == len(table) == 6 + 100
    assert sorted(summary["unreadable"]) == sorted([str(folder / "cut.jpg"), str(folder / "notes.txt")])
    assert set(table["class"]) <= set(json.loads((model_dir / "classes.json").read_text()))
    assert table.probability.between(0, 1).all()
    # the same images through the shards and as files: the same classes
    files, members = table[~table.source.str.contains("::")], table[table.source.str.contains("::")]
    by_file = files.set_index(files.source.str.rsplit("/", n=1).str[-1])
    by_member = members.set_index(members.source.str.split("::").str[-1])
    common = by_file.index.intersection(by_member.index)
    assert len(common) == 6 and (by_file.loc[common, "class"] == by_member.loc[common, "class"]).all()
    # the command line: a bar or lines, one line per unreadable image, the summary
    code = main(
        ["predict", str(model_dir), str(folder), "--out", str(tmp_path / "p.parquet"), "--workers", "1"]
    )
    captured = capsys.readouterr()
    assert code == 0 and captured.err.count("unreadable, skipped") == 2
    assert json.loads(captured.out)["predicted"] == 6
    assert main(["predict", str(tmp_path), str(folder)]) == 2
    assert "model.ts is missing" in capsys.readouterr().err


def test_flip_averaged_embeddings_and_a_classifier_that_averages_the_same_way(seeded_root, tmp_path) -> None:
    from lakelabel.data_specs.embeddings import read_embeddings
    from lakelabel.pipeline.config import EmbedConfig
    from lakelabel.pipeline.embed import embed

    root, _ = seeded_root
    plain = read_embeddings(next((root / "embeddings").glob("tiny-*")))
    summary = embed(root, EmbedConfig(encoder="tiny", workers=0, flip_average=True))
    flipped = read_embeddings(summary["embeddings"])
    assert "tiny-flip-" in summary["embeddings"] and flipped.meta["flip_average"] is True
    assert list(flipped.keys) == list(plain.keys)
    a, b = plain.matrix(), flipped.matrix()
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1, atol=1e-2)
    assert 0.9 < float((a * b).sum(1).mean()) < 0.9999  # close to the plain features, not the same
    from lakelabel.models.classifier import Head, ImageClassifier
    from lakelabel.pipeline.training import embedding_encoder

    encoder = embedding_encoder(root, flipped)
    model = ImageClassifier(
        encoder.module, Head(encoder.dim, 3), encoder.mean, encoder.std, flip_average=True
    )
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model(images), model(images.flip(-1)), atol=1e-5)  # mirror-invariant
