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
    "select": {"rounds": 1, "epochs": 1, "min_steps": 10, "passes": 3, "hidden": 32, "review_per_class": 1},
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


@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_process_worker_runs_curate(prefect_server, tmp_path):
    env, prefect = prefect_server
    prefect("work-pool", "create", "lakelabel-process", "--type", "process")
    prefect("--no-prompt", "deploy", "--all")
    deployment = json.loads(prefect("deployment", "inspect", "curate/nightly-curate", "--output", "json"))
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
    weekly = json.loads(prefect("deployment", "inspect", "pretrain/weekly-pretrain", "--output", "json"))
    assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 0"]

    root = tmp_path / "demo" / "root"
    config = {"root": str(root), **TINY}
    out = prefect("deployment", "run", "curate/nightly-curate", "--params", json.dumps({"config": config}))
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    prefect("worker", "start", "--pool", "lakelabel-process", "--run-once", timeout=600)
    state = _completed(prefect, run_id)
    assert state["type"] == "COMPLETED", state
    runs = list_runs(str(root / "labels"))
    assert len(runs) == 1 and runs[0]["rows"] == 600


@pytest.mark.slow
def test_lakelabel_serve_registers_and_runs_deployments(prefect_server, tmp_path):
    import yaml

    env, prefect = prefect_server
    root = tmp_path / "served" / "root"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({"root": str(root), **TINY}))
    lakelabel = str(Path(sys.executable).with_name("lakelabel"))
    serve = subprocess.Popen(
        [lakelabel, "serve", "--config", str(config_file), "--cron", "0 1 * * *"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            listed = subprocess.run(
                [PREFECT, "deployment", "ls"], env=env, capture_output=True, text=True
            ).stdout
            if "nightly-curate" in listed and "weekly-pretrain" in listed:
                break
            time.sleep(1)
        deployment = json.loads(prefect("deployment", "inspect", "curate/nightly-curate", "--output", "json"))
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 1 * * *"]
        out = prefect("deployment", "run", "curate/nightly-curate")
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        deadline = time.time() + 400
        while time.time() < deadline and _completed(prefect, run_id)["type"] not in (
            "COMPLETED",
            "FAILED",
            "CRASHED",
        ):
            time.sleep(2)
        assert _completed(prefect, run_id)["type"] == "COMPLETED"
        assert len(list_runs(str(root / "labels"))) == 1
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=30)


def test_prefect_yaml_names_the_installed_prefect_and_schedules_no_demo_lake() -> None:
    """Deploying as shipped must not start labelling the demo lake every night."""
    import prefect
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["prefect-version"] == prefect.__version__
    for deployment in spec["deployments"]:
        config = deployment["parameters"].get("config", {})
        active = any(s.get("active", True) for s in deployment.get("schedules", []))
        assert not (active and ("demo" in str(deployment["parameters"]) or config.get("source", "") is None))
