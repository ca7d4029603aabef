"""One import name: the wheel installs only ``lakelabel`` (a user's own ``models`` or ``pipeline``
package is never shadowed) and holds every module of the repository (a wheel once lacked
``models.methods``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_FOLDERS = ("pipeline", "models", "flows", "data_specs")


@pytest.mark.slow
def test_the_wheel_installs_one_import_name_with_every_module(tmp_path: Path) -> None:
    had_build = (REPO / "build").exists()
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    try:
        subprocess.run([*command, "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    finally:
        if not had_build:  # setuptools builds in the checkout: leave it as it was
            shutil.rmtree(REPO / "build", ignore_errors=True)
    (wheel,) = tmp_path.glob("lakelabel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"lakelabel"}
    tree = {
        f"lakelabel/{path.relative_to(REPO).as_posix()}"
        for top in TOP_FOLDERS
        for path in (REPO / top).rglob("*.py")
    } | {f"lakelabel/{p.name}" for p in (REPO / "lakelabel").glob("*.py")}
    assert tree <= set(names), sorted(tree - set(names))
    assert "lakelabel/flows/configs/demo.yaml" in names and "lakelabel/data_specs/labels.md" in names

    # installed alone (no site-packages, no checkout on the path): only `lakelabel` is importable
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import lakelabel, lakelabel.data_specs.shards\n"
        "for name in ('models', 'pipeline', 'flows', 'data_specs'):\n"
        "    try:\n        __import__(name)\n    except ModuleNotFoundError:\n        continue\n"
        "    raise SystemExit(name + ' is importable')\n"
        "print(lakelabel.data_specs.shards.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().startswith(str(site / "lakelabel" / "data_specs"))


def test_the_installed_package_does_not_shadow_a_users_models(tmp_path: Path) -> None:
    """The development install too: outside the checkout, `import models` finds the user's own."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("WHOSE = 'user'\n")
    code = "import models, lakelabel.models.heads as ours; print(models.WHOSE, ours.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["user", "lakelabel.models.heads"]


def test_the_public_api_loads_lazily() -> None:
    code = (
        "import sys, lakelabel; print(sorted(m for m in ('torch', 'prefect', 'pyarrow') if m in "
        "sys.modules));"
        "from lakelabel import LabeledShards, curate_flow, read_labels, read_embeddings, read_assignments;"
        "print(LabeledShards.__module__, curate_flow.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "[]"
    assert lines[1] == "lakelabel.pipeline.labeled_shards curate"
