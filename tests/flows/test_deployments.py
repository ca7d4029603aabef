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

from pipeline.labels import list_runs
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


@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_process_worker_runs_curate(tmp_path):
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
        prefect("work-pool", "create", "lakelabel-process", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        deployments = json.loads(
            prefect("deployment", "inspect", "curate/nightly-curate", "--output", "json")
        )
        assert [s["schedule"]["cron"] for s in deployments["schedules"]] == ["0 2 * * *"]
        weekly = json.loads(prefect("deployment", "inspect", "pretrain/weekly-pretrain", "--output", "json"))
        assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 0"]

        root = tmp_path / "demo" / "root"
        config = {
            "root": str(root),
            "ingest": {"workers": 0, "shard_max_count": 300},
            "pretrain": {
                "method": "simclr",
                "stem": "imagenet",
                "batch_size": 32,
                "max_steps": 2,
                "workers": 0,
            },
            "embed": {"workers": 0},
            "cluster": {"k": 4, "heads": 1, "epochs": 1},
            "select": {
                "rounds": 1,
                "epochs": 1,
                "min_steps": 10,
                "passes": 3,
                "hidden": 32,
                "review_per_class": 1,
            },
        }
        out = prefect(
            "deployment", "run", "curate/nightly-curate", "--params", json.dumps({"config": config})
        )
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        prefect("worker", "start", "--pool", "lakelabel-process", "--run-once", timeout=600)
        state = json.loads(prefect("flow-run", "inspect", run_id, "--output", "json"))["state"]
        assert state["type"] == "COMPLETED", state
        runs = list_runs(str(root / "labels"))
        assert len(runs) == 1 and runs[0]["rows"] == 600
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
