from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser, main
from tests.lakes import make_plain_lake


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert "ingest" in subcommands
    for name in subcommands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: lakelabel " + name in capsys.readouterr().out


def _ingest_command(lake: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "ingest", str(lake), "--out", str(out), "--workers", "0"]


def test_ingest_cli_prints_one_json_summary_line(tmp_path: Path):
    lake = tmp_path / "lake"
    make_plain_lake(lake, 12)
    out = subprocess.run(
        _ingest_command(lake, tmp_path / "out"),
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["sharded"] == 12


def test_bad_inputs_fail_with_one_clear_message(tmp_path: Path, capsys):
    assert main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "source does not exist" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ingest:\n  shard_max_cnt: 5\n")
    lake = tmp_path / "lake"
    make_plain_lake(lake, 1)
    assert main(["ingest", str(lake), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'shard_max_cnt'" in err and "shard_max_count" in err
    assert main(["ingest", str(lake), "--out", str(tmp_path / "o"), "--jpeg-quality", "0"]) == 2
    assert "jpeg_quality" in capsys.readouterr().err


def test_example_config_loads_with_every_section():
    import yaml

    from pipeline.config import SECTIONS, LakelabelConfig, load_config

    path = Path(__file__).resolve().parents[2] / "flows" / "configs" / "example.yaml"
    config = load_config(path)
    assert config.ingest.shard_max_count == 5000 and config.pretrain.method == "simsiam"
    assert config.runner.kind == "threads"
    # the example documents every key of every section (and the defaults it shows are the defaults)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == set(LakelabelConfig.model_fields)
    for section, model in SECTIONS.items():
        assert set(raw[section]) == set(model.model_fields), section
        assert getattr(config, section) == model(), section
    demo = load_config(Path(__file__).resolve().parents[2] / "flows" / "configs" / "demo.yaml")
    assert demo.cluster.k == 4 and demo.pretrain.run_name == "demo"


def test_every_pretrain_flag_reaches_the_config():
    from flows.cli import _pretrain_config

    args = build_parser().parse_args(
        [
            "pretrain",
            "ROOT",
            "--stem",
            "imagenet",
            "--method",
            "byol",
            "--loss",
            "wasserstein",
            "--image-size",
            "48",
            "--max-steps",
            "7",
            "--lr",
            "0.3",
            "--optimizer",
            "lars",
            "--run-name",
            "x",
        ]
    )
    config = _pretrain_config(args)
    assert (config.stem, config.method, config.loss, config.image_size) == (
        "imagenet",
        "byol",
        "wasserstein",
        48,
    )
    assert (config.max_steps, config.lr, config.optimizer, config.run_name) == (7, 0.3, "lars", "x")
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["pretrain"]._actions}
    from pipeline.config import PretrainConfig

    missing = (
        set(PretrainConfig.model_fields)
        - flags
        - {
            "momentum",
            "weight_decay",
            "warmup_epochs",
            "shuffle_buffer",
            "channels_last",
            "compile",
            "knn_k",
            "knn_temperature",
            "knn_max_train",
            "knn_max_test",
        }
    )
    assert not missing, f"pretrain options without a flag: {missing}"


def test_ingest_on_a_terminal_shows_its_bar_and_succeeds(tmp_path: Path):
    """stderr on a pseudo-terminal: the progress bar is drawn (a tqdm without a total once crashed
    `if bar:` in every interactive terminal)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    lake = tmp_path / "lake"
    make_plain_lake(lake, 12)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new pty is 0 × 0
    proc = subprocess.run(
        _ingest_command(lake, tmp_path / "root"),
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=300,
    )
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    assert json.loads(proc.stdout)["sharded"] == 12
    assert b"ingest" in drawn and b"file" in drawn


def test_malformed_yaml_is_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  method: [simclr\n")
    assert main(["pretrain", str(tmp_path), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML at line" in err and "Traceback" not in err


def test_root_that_is_a_file_is_one_line(tmp_path: Path, capsys):
    lake = tmp_path / "lake"
    make_plain_lake(lake, 3)
    root = tmp_path / "root"
    root.write_text("not a folder")
    for out in (root, root / "below"):
        assert main(["ingest", str(lake), "--out", str(out), "--workers", "0", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lakelabel ingest: error:") and "root" in err and "Traceback" not in err
    assert root.read_text() == "not a folder"  # nothing lost
