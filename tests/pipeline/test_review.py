"""Human in the loop on real CIFAR-10 images: suggest (TypiClust) writes a review batch, the review
page's API records answers atomically (undo, resume, 4xx for bad requests), and an answered batch
comes back through select and publish as a label run whose lineage names it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lakelabel.cli import main
from lakelabel.data_specs.batches import answered_labels, list_batches, read_batch, read_classes
from lakelabel.data_specs.embeddings import find_embeddings, read_embeddings
from lakelabel.data_specs.labels import default_dest, list_runs, read_labels
from lakelabel.pipeline.config import EmbedConfig, SelectConfig, SuggestConfig
from lakelabel.pipeline.embed import embed
from lakelabel.pipeline.labels import publish_labels
from lakelabel.pipeline.review.batch import BatchAnswers
from lakelabel.pipeline.review_page import create_app, find_batch
from lakelabel.pipeline.select import select
from lakelabel.pipeline.suggest import suggest, typiclust
from lakelabel.pipeline.truth import attach_keys
from tests.roots import copy_root

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def embedded_root(cifar_root, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A copy of the session's CIFAR root, embedded; and its truth joined to keys."""
    root = tmp_path_factory.mktemp("review") / "root"
    copy_root(cifar_root[0], root)
    embed(root, EmbedConfig(encoder="tiny", workers=0))
    truth = attach_keys(root, pd.read_csv(cifar_root[1]))
    return root, truth


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_typiclust_covers_the_largest_open_clusters_with_typical_images() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:4] * 10  # four well separated blobs
    sizes = [400, 300, 200, 100]
    x = np.concatenate([c + rng.normal(size=(s, 8)) for c, s in zip(centres, sizes, strict=True)])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    covered = np.zeros(len(x), bool)
    covered[0] = True  # a labelled image in the largest blob
    picks, scores = typiclust(x, covered, 3, SuggestConfig(budget=3, neighbours=10))
    blob = np.repeat(np.arange(4), sizes)
    assert sorted(blob[picks].tolist()) == [1, 2, 3]  # the three blobs no label covers
    assert (scores > 0).all() and not covered[picks].any()
    # typical: nearer its blob's centre than the blob's average member
    for p in picks:
        members = x[blob == blob[p]]
        centre = members.mean(0)
        assert np.linalg.norm(x[p] - centre) < np.linalg.norm(members - centre, axis=1).mean()


def test_suggest_writes_a_review_batch_and_takes_labels_into_account(embedded_root, tmp_path) -> None:
    root, truth = embedded_root
    with pytest.raises(ValueError, match="class names"):
        suggest(root, SuggestConfig(budget=5))
    first = suggest(root, SuggestConfig(budget=12, classes=NAMES, name="s1"))
    batch = find_batch(root, "s1")
    rows = read_batch(batch)
    assert first["suggested"] == len(rows) == 12 and rows.key.is_unique and (rows.answer == "").all()
    assert read_classes(batch) == dict(enumerate(NAMES))
    for thumb in rows.thumbnail:
        with Image.open(batch.dir / thumb) as im:
            assert max(im.size) == 224  # 32 px images, enlarged to judge
    # again: the same batch, kept as it is (a person's answers in it are never overwritten)
    assert suggest(root, SuggestConfig(budget=12, classes=NAMES, name="s1"))["existing"] is True
    # seed labels: never suggested again, nor anything of an earlier batch
    seeds = truth[~truth.key.isin(rows.key)].iloc[:20][["key", "label", "label_name"]]
    seed_csv = tmp_path / "seeds.csv"
    seeds.to_csv(seed_csv, index=False)
    second = suggest(root, SuggestConfig(budget=12, seed_labels=[str(seed_csv)]))
    again = read_batch(find_batch(root, second["batch"]))
    assert second["labelled_before"] == 20 and second["batch"].startswith("suggest-")
    assert not set(again.key) & (set(seeds.key) | set(rows.key))
    n = read_embeddings(find_embeddings(root)).n
    with pytest.raises(ValueError, match="budget"):
        suggest(root, SuggestConfig(budget=n, classes=NAMES))


def test_the_review_api_stores_each_answer_atomically_and_refuses_bad_requests(embedded_root) -> None:
    root, _ = embedded_root
    suggest(root, SuggestConfig(budget=6, classes=NAMES, name="api", seed=3))
    batch = find_batch(root, "api")
    client = TestClient(create_app(batch))
    state = client.get("/api/batch").json()
    keys = [it["key"] for it in state["items"]]
    assert state["total"] == 6 and state["next"] == 0 and len(state["classes"]) == 10
    assert "api/batch" in client.get("/").text  # (the page builds its buttons from the API)
    assert client.get("/" + state["items"][0]["image"]).headers["content-type"] == "image/png"
    before = _sha(batch.csv)
    for bad, status in (
        ({"key": "nope", "answer": "label", "label": 1}, 404),
        ({"key": keys[0], "answer": "label", "label": 42}, 422),
        ({"key": keys[0], "answer": "maybe"}, 422),
        ({"key": keys[0], "answer": "label"}, 422),
        ({"key": keys[0]}, 422),
    ):
        r = client.post("/api/answer", json=bad)
        assert r.status_code == status and r.json()["detail"]
    for path in ("/image/..%2Freview.csv", "/image/../../manifest", "/image/%2Fetc%2Fpasswd", "/image/x.png"):
        assert client.get(path).status_code == 404
    assert _sha(batch.csv) == before  # nothing changed
    assert (
        client.post("/api/answer", json={"key": keys[0], "answer": "label", "label": 3}).json()["next"] == 1
    )
    client.post("/api/answer", json={"key": keys[1], "answer": "none"})
    client.post("/api/answer", json={"key": keys[2], "answer": "skip"})
    on_disk = read_batch(batch)  # each answer is on disk when its request returns
    assert on_disk.answer.tolist()[:3] == ["label", "none", "skip"] and on_disk.label_name[0] == "cat"
    assert client.post("/api/undo").json()["undone"] == keys[2]
    assert read_batch(batch).answer[2] == ""
    # a new server (a restart) resumes at the first unanswered image
    assert BatchAnswers(batch).progress() == {"answered": 2, "total": 6, "labelled": 1, "next": 2}
    assert TestClient(create_app(batch)).get("/api/batch").json()["next"] == 2
    assert answered_labels(batch).to_dict("records") == [{"key": keys[0], "label": 3, "label_name": "cat"}]


def test_a_reviewed_batch_becomes_a_label_version_that_names_it(embedded_root, tmp_path, capsys) -> None:
    root, truth = embedded_root
    seeds = truth.groupby("label").head(3)[["key", "label", "label_name"]]
    seed_csv = tmp_path / "seeds.csv"
    seeds.to_csv(seed_csv, index=False)
    small = dict(labels_from="seed", rounds=1, epochs=1, min_steps=20, passes=3, review_budget=8)
    first = select(root, SelectConfig(**small, seed_labels=[str(seed_csv)], run_name="round1"))
    batch = find_batch(root, first["review"]["batch"])
    rows = read_batch(batch)
    assert len(rows) == 8 and not rows.key.isin(seeds.key).any()
    # a person answers the batch from the truth
    answers = BatchAnswers(batch)
    label_of = truth.set_index("key").label
    for key in rows.key:
        answers.answer(key, "label", int(label_of[key]))
    second = select(root, SelectConfig(**small, seed_labels=[str(seed_csv)], run_name="round2"))
    answered = {k for b in list_batches(root) for k in answered_labels(b).key}  # (the API test's too)
    assert set(rows.key) <= answered
    assert second["seed_labels_used"] == len(set(seeds.key) | answered)
    assert [s.get("batch") for s in second["seed_sources"]][-1] == batch.name
    published = publish_labels(root, "round2")
    record = list_runs(default_dest(root))[-1]
    assert record["run_id"] == published["run_id"]
    reviewed = [s for s in record["seed_sources"] if s.get("batch") == batch.name]
    assert reviewed and reviewed[0]["labels"] == 8 and reviewed[0]["sha256"] == _sha(batch.csv)
    labels = read_labels(default_dest(root), published["run_id"]).to_pandas().set_index("key")
    back = labels.loc[rows.key]
    assert back.is_seed.all() and (back.label.astype(int).to_numpy() == label_of[rows.key].to_numpy()).all()
    # the CLI: suggest, and review's one-line error for an unknown batch
    assert main(["suggest", str(root), "--budget", "4", "--json"]) == 0
    assert main(["review", str(root), "--batch", "no-such-batch"]) == 2
    assert "no review batch 'no-such-batch'" in capsys.readouterr().err
