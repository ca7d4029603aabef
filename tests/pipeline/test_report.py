"""``lakelabel report`` on real CIFAR-10 images: figures, metrics, and rendering in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lakelabel.cli import main
from lakelabel.data_specs.labels import read_labels
from lakelabel.pipeline.config import SelectConfig
from lakelabel.pipeline.labels import publish_labels
from lakelabel.pipeline.report import build_report
from lakelabel.pipeline.select import select
from lakelabel.pipeline.truth import attach_keys, read_label_csv
from tests.pipeline.conftest import clustered_copy


def chromium() -> str:
    """Debian's chromium (installed by the README's test command), or $LAKELABEL_CHROMIUM."""
    for candidate in (os.environ.get("LAKELABEL_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    pytest.fail("no headless browser: install Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def labelled_root(cifar_root, tmp_path_factory):
    _, truth, _ = cifar_root
    tmp = tmp_path_factory.mktemp("report")
    root = clustered_copy(cifar_root, tmp, heads=2, epochs=1)
    seed_csv = tmp / "seed.csv"
    pd.read_csv(truth).groupby("label").head(4).to_csv(seed_csv, index=False)
    small = dict(
        rounds=1, epochs=1, min_steps=20, passes=3, hidden=32, review_budget=20, ups={"tau_p": 0.1}
    )  # calibrated: a 2-step encoder is near chance
    select(root, SelectConfig(labels_from="seed", seed_labels=[str(seed_csv)], **small))
    record = publish_labels(root)
    return root, truth, record["run_id"]


def render(html_path, tmp_path) -> tuple[str, np.ndarray]:
    """The DOM after scripts ran, and a screenshot, from headless Chromium."""
    browser = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [browser, *flags, "--virtual-time-budget=10000", "--dump-dom", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", html_path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dom, np.asarray(Image.open(shot).convert("RGB"))


def test_report_renders_in_headless_chromium(labelled_root, tmp_path) -> None:
    root, truth, run_id = labelled_root
    meta = build_report(root, truth=truth)
    html_path = root / "reports" / run_id / "report.html"
    assert meta["run_id"] == run_id and meta["html"] == str(html_path)
    expected = {
        "montage_classes",
        "montage_clusters",
        "confidence",
        "uncertainty",
        "class_counts",
        "precision_coverage",
        "confusion",
    }
    assert expected <= set(meta["figures"])
    for path in meta["figures"].values():
        assert Image.open(path).size[0] > 100
    page = html_path.read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == meta["images_inlined"] and all(
        s.startswith("data:image/png;base64,") for s in sources
    )
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "label them in review.csv" in page and "surely is not" in page  # roles explained
    assert "<td>ups.tau_p</td>" in page and "figures rendered" not in page  # config as a table

    dom, screenshot = render(html_path, tmp_path)
    check = re.search(r'id="render-check"[^>]*data-rendered="(\d+)" data-total="(\d+)"', dom)
    assert check, "the page's load handler did not run"
    assert int(check[1]) == int(check[2]) == meta["images_inlined"]
    assert screenshot.std() > 10  # not a blank page

    # the report's numbers, recomputed from the published table and the truth CSV
    labels = read_labels(str(root / "labels"), run_id).to_pandas()
    truth_of = attach_keys(root, read_label_csv(truth)).drop_duplicates("key").set_index("key").label
    positives = labels[(labels.role == "positive") & ~labels.is_seed]
    precision = float(
        (positives.label.astype(int).to_numpy() == positives.key.map(truth_of).to_numpy()).mean()
    )
    assert meta["metrics"]["positives"] == len(positives)
    assert meta["metrics"]["precision"] == pytest.approx(precision, abs=1e-4)
    assert meta["metrics"]["precision_at_coverage"]["1.0"] == meta["metrics"]["accuracy_full_coverage"]
    montage_rows = Image.open(meta["figures"]["montage_classes"]).size[1] // 50
    assert montage_rows == labels[labels.role == "positive"].label_name.nunique()  # one row per class


def test_cli_report_without_truth_and_with_a_bad_run(labelled_root, tmp_path, capsys) -> None:
    root, _, run_id = labelled_root
    out = tmp_path / "out"
    assert main(["report", str(root), "--labels", run_id, "--out", str(out), "--per-row", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_id"] == run_id and printed["metrics"] is None
    assert (out / "report.html").exists() and not (out / "confusion.png").exists()
    assert main(["report", str(root), "--labels", "no-such-run"]) == 2
    assert "no-such-run" in capsys.readouterr().err
    assert main(["report", str(root), "--per-row", "0"]) == 2
