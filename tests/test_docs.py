"""The documentation builds (MkDocs, strict: a broken link or a page outside the nav fails) and the
README stays a README (the stages' reference, the benchmarks and the design live in docs/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mkdocs_builds_strict(tmp_path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for page in (
        "index.html",
        "orchestration/index.html",
        "contracts/labels/index.html",
        "benchmarks/index.html",
    ):
        assert (tmp_path / "site" / page).is_file(), page


def test_the_readme_fits_its_reader() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for part in (
        "## Two commands on a fresh machine",
        "## A tour of the stages",
        "## Reading the labels",
        "## Deploying on a schedule",
        "## Documentation",
    ):
        assert part in readme, part
    for link in [line.split("](")[1].split(")")[0] for line in readme.split("[")[1:] if "](" in line]:
        if not link.startswith("http"):
            assert (REPO / link.split("#")[0]).exists(), link
