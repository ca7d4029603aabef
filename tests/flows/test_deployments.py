"""prefect.yaml deployed to a real Prefect server (SQLite in a temp PREFECT_HOME) and run by a
process worker: the nightly curate deployment writes labels; both cron schedules are registered."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lakelabel.data_specs.labels import list_runs
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


TINY = {
    "ingest": {"workers": 0, "shard_max_count": 300},
    "pretrain": {"method": "simclr", "stem": "imagenet", "batch_size": 32, "max_steps": 2, "workers": 0},
    "embed": {"workers": 0},
    "cluster": {"k": 4, "sela": {"heads": 1, "epochs": 1}},
    "select": {"rounds": 1, "epochs": 1, "min_steps": 10, "passes": 3, "hidden": 32, "review_budget": 10},
}


@pytest.fixture
def prefect_server(tmp_path):
    """A real ``prefect server start`` on 127.0.0.1; yields ``(env, prefect_cli)``."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "LAKELABEL_HOME": str(REPO),
    }

    def prefect(*args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(api, server)
        yield env, prefect
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _completed(prefect, run_id: str) -> dict:
    return json.loads(prefect("flow-run", "inspect", run_id, "--output", "json"))["state"]


def _labels_and_accuracy(root: Path) -> tuple[dict, float]:
    """The one label run under ``root`` ({key: label name}) and its accuracy on the demo's truth."""
    from lakelabel.data_specs.labels import read_labels
    from lakelabel.data_specs.selections import read_selection_summary

    (run,) = list_runs(str(root / "labels"))
    table = read_labels(str(root / "labels"), run["run_id"]).to_pandas()
    labels = dict(zip(table.key, table.label_name.fillna("-"), strict=True))
    return labels, read_selection_summary(root)["metrics"]["accuracy_full_coverage"]


def _wait_for(prefect, run_id: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _completed(prefect, run_id)["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED"):
            return state
        time.sleep(2)
    return "TIMEOUT"


@pytest.mark.slow
def test_deploy_serve_and_run_label_the_demo_lake_the_same_way(prefect_server, tmp_path):
    """prefect.yaml deployed as shipped carries flows/configs/demo.yaml (validated at deploy time),
    and a process worker runs it; `lakelabel serve` and `lakelabel run` on the same config label the
    same demo lake the same way (once a deployment ran k = 10 SimSiam on it: 0.25 accurate)."""
    import yaml

    env, prefect = prefect_server
    work = tmp_path / "work"  # LAKELABEL_HOME: the worker's working folder (the config's relative root)
    work.mkdir()
    env["LAKELABEL_HOME"] = str(work)
    prefect("work-pool", "create", "lakelabel-process", "--type", "process")
    prefect("--no-prompt", "deploy", "--all")
    deployment = json.loads(prefect("deployment", "inspect", "curate/nightly-curate", "--output", "json"))
    assert deployment["parameters"]["config"]["cluster"]["k"] == 4  # demo.yaml's, carried whole
    assert deployment["parameters"]["config"]["pretrain"] is None
    assert [(s["schedule"]["cron"], s["active"]) for s in deployment["schedules"]] == [("0 2 * * *", False)]
    weekly = json.loads(prefect("deployment", "inspect", "pretrain/weekly-pretrain", "--output", "json"))
    assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 0"]
    lakelabel = str(Path(sys.executable).with_name("lakelabel"))
    switched = subprocess.run(
        [lakelabel, "schedules", "on", "curate/nightly-curate", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert json.loads(switched.stdout) == [
        {"deployment": "curate/nightly-curate", "schedule": "0 2 * * *", "active": True}
    ], switched.stderr
    assert json.loads(prefect("deployment", "inspect", "curate/nightly-curate", "--output", "json"))[
        "schedules"
    ][0]["active"]

    out = prefect("deployment", "run", "curate/nightly-curate")  # the parameters as deployed
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    prefect("worker", "start", "--pool", "lakelabel-process", "--run-once", timeout=600)
    assert _completed(prefect, run_id)["type"] == "COMPLETED"
    deployed, accuracy = _labels_and_accuracy(work / "lakelabel-demo" / "root")
    assert accuracy >= 0.90 and len(deployed) == 600

    demo = yaml.safe_load((REPO / "flows" / "configs" / "demo.yaml").read_text())
    served_config = tmp_path / "served.yaml"
    served_config.write_text(yaml.safe_dump({**demo, "root": str(tmp_path / "served" / "root")}))
    serve = subprocess.Popen(
        [lakelabel, "serve", "--config", str(served_config), "--cron", "0 1 * * *"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while (
            time.time() < deadline
            and "nightly-curate-serve"
            not in subprocess.run(
                [PREFECT, "deployment", "ls"], env=env, capture_output=True, text=True
            ).stdout
        ):
            time.sleep(1)
        # its own names: the work-pool deployment of prefect.yaml is left as it was
        assert (
            json.loads(prefect("deployment", "inspect", "curate/nightly-curate", "--output", "json"))[
                "work_pool_name"
            ]
            == "lakelabel-process"
        )
        out = prefect("deployment", "run", "curate/nightly-curate-serve")
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        assert _wait_for(prefect, run_id) == "COMPLETED"
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=30)
    served, served_accuracy = _labels_and_accuracy(tmp_path / "served" / "root")

    ran = subprocess.run(
        [lakelabel, "run", "--root", str(tmp_path / "ran" / "root")], env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    by_run, run_accuracy = _labels_and_accuracy(tmp_path / "ran" / "root")
    assert deployed == served == by_run and accuracy == served_accuracy == run_accuracy


@pytest.mark.slow
def test_a_bad_config_fails_the_deploy_with_its_message(prefect_server, tmp_path):
    env, prefect = prefect_server
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  k: 1\n")
    spec = (REPO / "prefect.yaml").read_text().replace("path: flows/configs/demo.yaml", f"path: {bad}")
    (tmp_path / "prefect.yaml").write_text(spec)
    prefect("work-pool", "create", "lakelabel-process", "--type", "process")
    done = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(tmp_path / "prefect.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "cluster: k" in done.stdout + done.stderr
    listed = subprocess.run([PREFECT, "deployment", "ls"], env=env, capture_output=True, text=True).stdout
    assert "nightly-curate" not in listed


def test_prefect_yaml_names_the_installed_prefect_and_schedules_no_demo_lake() -> None:
    """Deploying as shipped must not start labelling the demo lake every night."""
    import prefect
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["prefect-version"] == prefect.__version__
    for deployment in spec["deployments"]:
        assert not any(s.get("active", True) for s in deployment.get("schedules", []))  # switched on by hand
