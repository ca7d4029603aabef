"""curate_flow end to end on the demo lake (real temp Prefect server), and its resume after a failure."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness

import lakelabel.flows.curate as curate_module
from lakelabel.data_specs.labels import list_runs, read_labels
from lakelabel.flows.curate import curate_flow
from lakelabel.pipeline.config import (
    ClusterConfig,
    EmbedConfig,
    IngestConfig,
    LakelabelConfig,
    PretrainConfig,
    SelectConfig,
)
from lakelabel.pipeline.demo import make_demo_lake


class InjectedFault(RuntimeError):
    """A failure the test injects into a stage."""


def tiny_config(root) -> LakelabelConfig:
    return LakelabelConfig(
        root=str(root),
        ingest=IngestConfig(workers=0, shard_max_count=200),
        pretrain=PretrainConfig(
            method="simclr", stem="imagenet", batch_size=32, max_steps=2, workers=0, run_name="tiny"
        ),
        embed=EmbedConfig(workers=0, shards_per_task=2),
        cluster=ClusterConfig(k=4, sela={"heads": 2, "epochs": 2}),
        select=SelectConfig(rounds=1, epochs=2, min_steps=20, passes=3, hidden=32, review_budget=20),
    )


@pytest.mark.slow
def test_curate_runs_end_to_end_and_resumes_after_a_failed_stage(tmp_path, monkeypatch):
    root = tmp_path / "demo" / "root"
    config = tiny_config(root)
    real_cluster_flow, failed = curate_module.cluster_flow, []

    def cluster_fails_once(*args, **kwargs):  # the stage crashes once (a lost worker, say)
        if not failed:
            failed.append(True)
            raise InjectedFault("cluster stage crashed")
        return real_cluster_flow(*args, **kwargs)

    monkeypatch.setattr(curate_module, "cluster_flow", cluster_fails_once)
    with prefect_test_harness(server_startup_timeout=120):
        with pytest.raises(InjectedFault):
            curate_flow(config)
        # ingest, pretrain and embed finished before the failure
        assert (root / "checkpoints" / "tiny" / "encoder.pt").exists()
        assert len(list(root.glob("embeddings/*/emb-*.parquet"))) == 3
        result = curate_flow(config)
        # a nightly run after new images arrived: only they are ingested and embedded; a new version
        more = make_demo_lake(tmp_path / "more", per_class=30, seed=1)
        shutil.copytree(more, root.parent / "lake" / "camera-new")
        nightly = curate_flow(config)
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["label-report", "curate-summary", "label-counts"])
                )
            )
    data_of: dict[str, list[str]] = {}
    for artifact in artifacts:  # one version per run that created the key, in no set order
        data_of.setdefault(artifact.key, []).append(artifact.data)
    assert set(data_of) == {"label-report", "curate-summary", "label-counts"}
    assert {a.type for a in artifacts if a.key == "label-report"} == {"markdown"}  # a link, as markdown
    # positives per class, once per published version (from the publish subflow)
    assert len(data_of["label-counts"]) == 2 and all("positive_labels" in d for d in data_of["label-counts"])
    for run in (result, nightly):
        assert any(Path(run["report"]).resolve().as_uri() in d for d in data_of["label-report"])
        assert any(run["report"] in d for d in data_of["curate-summary"])
    assert Path(result["report"]).is_file() and "render-check" in Path(result["report"]).read_text()
    assert (
        result["ingest"]["new"] == 0
        and result["ingest"]["already_ingested"] == result["ingest"]["found"] == 604
    )  # nothing new (600 + 1 copy + 2 bad + 1 .demo-complete)
    assert result["pretrain"]["skipped"] is True
    assert result["embed"]["shards_embedded"] == 0 and result["embed"]["shards_skipped"] == 3
    assert result["cluster"]["skipped"] is False and result["cluster"]["k"] == 4
    labels = read_labels(result["labels"], result["label_run"]).to_pandas()
    assert len(labels) == result["select"]["images"] == 600  # the copied file is a duplicate, stored once
    names = set(labels.label_name.dropna())
    assert names and names <= {"box_truck", "round_car", "tri_plane", "bar_ship"}
    assert "metrics" in result["select"]  # the demo's ground truth is used for evaluation
    ingest = nightly["ingest"]
    assert (ingest["new"], ingest["sharded"], ingest["duplicate"], ingest["rejected"]) == (124, 120, 1, 2)
    assert ingest["already_ingested"] == 604
    assert nightly["embed"]["shards_embedded"] == 1 and nightly["embed"]["shards_skipped"] == 3
    assert nightly["pretrain"]["skipped"] is True and nightly["cluster"]["skipped"] is False
    runs = list_runs(nightly["labels"])
    assert [r["run_id"] for r in runs] == [result["label_run"], nightly["label_run"]]
    new_labels = read_labels(nightly["labels"], nightly["label_run"]).to_pandas()
    assert len(new_labels) == 720 and set(labels.key) < set(new_labels.key)
    assert len(read_labels(result["labels"], result["label_run"])) == 600  # the earlier version is kept
    assert set(result["timings"]) == {"ingest", "pretrain", "embed", "cluster", "select", "publish", "report"}


def test_ctrl_c_stops_lakelabel_run_at_once_with_one_line(tmp_path):
    """SIGINT to the main process of `lakelabel run` (once ignored by Prefect's retries): exit 130
    within seconds, one line, no traceback, no process of the run left (workers, Prefect's server)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "root"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakelabel", "run", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: what it leaves behind is findable
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not any((root / "shards").glob("*.tar")) and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        sent = time.time()
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert time.time() - sent < 15
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted" in err.strip().splitlines()[-1] and "Traceback" not in err
        time.sleep(2)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing of the run's process group is left
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_demo_shows_labels_that_are_right(tmp_path):
    """`lakelabel run`'s embedded default on its generated 4-class lake: the labels a newcomer sees
    must be visibly right (once 0.31 accurate at ~1.0 confidence, with no warning)."""
    from lakelabel.cli import DEMO_CONFIG
    from lakelabel.pipeline.config import load_config

    config = load_config(DEMO_CONFIG, root=str(tmp_path / "demo" / "root"))
    with prefect_test_harness(server_startup_timeout=120):
        result = curate_flow(config)
    metrics = result["select"]["metrics"]
    assert metrics["accuracy_full_coverage"] >= 0.90 and metrics["precision"] >= 0.90, metrics
    assert metrics["ece"] <= 0.10 and result["select"]["warnings"] == []


def test_quality_warnings_name_what_is_wrong():
    from lakelabel.pipeline.metrics import quality_warnings

    assert quality_warnings({"accuracy_full_coverage": 0.95, "ece": 0.02}, 4) == []
    near = quality_warnings(
        {"accuracy_full_coverage": 0.31, "ece": 0.6, "baseline_logreg": {"accuracy_full_coverage": 0.5}}, 4
    )
    assert [w.split(":")[0] for w in near] == [
        "labels near chance",
        "confidences are off",
        "below the same-run baseline",
    ]


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (from /proc)."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found.update(kids)
        todo += kids
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_kill_9_of_lakelabel_run_leaves_no_process_behind(tmp_path):
    """SIGKILL gives `lakelabel run` no chance to clean up: its temporary Prefect server (once left
    listening, 220 MB) and its workers must die with it all the same."""
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    for stage in ("shards", "embeddings"):  # killed while ingesting, then while embedding
        root = tmp_path / stage / "root"
        proc = subprocess.Popen(
            [sys.executable, "-m", "lakelabel", "run", "--root", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        seen: set[int] = set()
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not any((root / stage).glob("*")):
            seen |= _descendants(proc.pid)
            time.sleep(0.1)
        seen |= _descendants(proc.pid)
        assert proc.poll() is None and seen, "the run ended before it could be killed"
        proc.kill()
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(_running(p) for p in seen):
            time.sleep(0.2)
        assert not [p for p in seen if _running(p)], f"left behind after kill -9 at {stage}"


def test_run_checks_its_paths_before_prefect_starts(tmp_path):
    """A label table under a file, a ROOT that is a file, a missing source or seed file, a bad key:
    one line, rc 2, and Prefect never loaded (no server, no traceback; about a second)."""
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = tmp_path / "run.yaml"
    cases = {
        f"root: {tmp_path / 'r'}\nlabels_dest: {blocker / 'labels'}\n": "labels_dest must be a folder",
        f"root: {blocker}\n": "root must be a folder",
        f"root: {tmp_path / 'r'}\nsource: {tmp_path / 'no-lake'}\n": "source does not exist",
        f"root: {tmp_path / 'r'}\nselect:\n  seed_labels: [{tmp_path / 'no.csv'}]\n": "seed-label CSV",
        "cluster:\n  k: 1\n": "cluster: k: Input should be greater than 1",
    }
    code = (
        "import sys; from lakelabel.cli import main; code = main(['run', '--config', sys.argv[1]]); "
        "print('prefect' in sys.modules, 'torch' in sys.modules, code)"
    )
    for text, message in cases.items():
        config.write_text(text)
        done = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True)
        err = done.stderr.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert done.stdout.split() == ["False", "False", "2"]
    assert not (tmp_path / "r").exists()


def _on_a_terminal(argv: list[str], timeout: float = 600) -> tuple[int, list[str]]:
    """``argv`` with stdout and stderr on one 80 × 24 pseudo-terminal: its exit code and the lines it
    left on the screen (each line as its last carriage return left it)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_LOGGING_LEVEL", "PREFECT_API_URL")}
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, env=env)  # Prefect's INFO lines on
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed its side
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    code = proc.wait(timeout=timeout)
    text = drawn.decode(errors="replace").replace("\r\n", "\n")
    return code, [line.split("\r")[-1] for line in text.rstrip("\n").split("\n")]


@pytest.mark.slow
def test_lakelabel_run_on_a_terminal_shows_a_bar_per_stage_and_few_lines(tmp_path):
    """The demo run on a terminal: a bar per stage, the summary, the log it names holds Prefect's lines
    (progress at most every few seconds, by stage); a failing stage is one line naming that log."""
    import sys
    from pathlib import Path

    lakelabel = str(Path(sys.executable).with_name("lakelabel"))
    code, lines = _on_a_terminal([lakelabel, "run", "--root", str(tmp_path / "demo" / "root")])
    assert code == 0, lines
    assert len(lines) <= 30, lines
    for stage in ("ingest", "embed", "cluster", "select", "publish", "report"):
        assert any(line.startswith(f"{stage}: ") for line in lines), (stage, lines)
    assert not [line for line in lines if " INFO " in line or "Traceback" in line]
    (log,) = [line.split(": ", 1)[1] for line in lines if line.startswith("log: ")]
    text = Path(log).read_text()
    assert (
        "stage select done" in text and "select: 2 of 2 rounds" in text and "embed: 600 of 600 images" in text
    )

    bad = tmp_path / "bad-seeds.csv"
    bad.write_text("path,label\nx.jpg,car\n")  # a class name where a class id belongs
    config = tmp_path / "run.yaml"
    demo = (Path(__file__).resolve().parents[2] / "flows" / "configs" / "demo.yaml").read_text()
    config.write_text(demo.replace("labels_from: clusters", f"labels_from: seed\n  seed_labels: [{bad}]"))
    code, lines = _on_a_terminal(
        [lakelabel, "run", "--config", str(config), "--root", str(tmp_path / "b" / "r")]
    )
    errors = [line for line in lines if "error" in line]
    assert code == 2 and len(errors) == 1, lines
    assert "column 'label' must hold integer class ids" in errors[0] and "the run's log: " in errors[0]
    assert not [line for line in lines if "Traceback" in line]
    log = errors[0].rpartition("the run's log: ")[2].rstrip(")")
    assert "Traceback" in Path(log).read_text()


def test_prefect_does_not_retry_an_error_that_would_only_come_again():
    from prefect.states import Failed

    from lakelabel.data_specs.labels import LabelsNotFound
    from lakelabel.data_specs.validation import ContractError
    from lakelabel.flows.runners import retry_unless_deterministic

    for error in (ContractError("bad"), LabelsNotFound("gone"), NotADirectoryError("file"), ValueError("x")):
        assert not retry_unless_deterministic(None, None, Failed(data=error))
    for error in (ConnectionError("flaky store"), RuntimeError("lost a worker"), OSError("disk")):
        assert retry_unless_deterministic(None, None, Failed(data=error))
