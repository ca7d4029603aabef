from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lakelabel.cli import build_parser, main
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
    return [sys.executable, "-m", "lakelabel", "ingest", str(lake), "--out", str(out), "--workers", "0"]


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

    from lakelabel.pipeline.config import SECTIONS, LakelabelConfig, load_config
    from lakelabel.pipeline.registry import BlockSettings

    path = Path(__file__).resolve().parents[2] / "flows" / "configs" / "example.yaml"
    config = load_config(path)
    assert config.ingest.shard_max_count == 5000 and config.pretrain.method == "simsiam"
    assert config.runner.kind == "threads"
    # the example documents every key of every section (and the defaults it shows are the defaults)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == set(LakelabelConfig.model_fields)
    for section, model in SECTIONS.items():  # a registry entry's block may be left out (defaults)
        blocks = {
            n
            for n, f in model.model_fields.items()
            if getattr(f.annotation, "__mro__", None) and issubclass(f.annotation, BlockSettings)
        }
        assert set(model.model_fields) - blocks <= set(raw[section]) <= set(model.model_fields), section
        for block in blocks & set(raw[section]):
            assert set(raw[section][block]) == set(model.model_fields[block].annotation.model_fields), block
        assert getattr(config, section) == model(), section
    demo = load_config(Path(__file__).resolve().parents[2] / "flows" / "configs" / "demo.yaml")
    assert (
        demo.cluster.k == 4 and demo.pretrain is None and demo.embed.encoder == "timm:tf_efficientnet_lite0"
    )


def test_every_pretrain_flag_reaches_the_config():
    from lakelabel.cli import _pretrain_config

    argv = ["pretrain", "ROOT", "--stem", "imagenet", "--method", "byol", "--loss", "wasserstein"]
    argv += [
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
    argv += ["--no-channels-last", "--knn-k", "5"]
    config = _pretrain_config(build_parser(argv).parse_args(argv))
    assert (config.stem, config.method, config.loss, config.image_size) == (
        "imagenet",
        "byol",
        "wasserstein",
        48,
    )
    assert (config.max_steps, config.lr, config.optimizer, config.run_name) == (7, 0.3, "lars", "x")
    assert (config.channels_last, config.knn_k) == (False, 5)


@pytest.mark.parametrize(
    ("command", "model"),
    [
        ("pretrain", "PretrainConfig"),
        ("embed", "EmbedConfig"),
        ("cluster", "ClusterConfig"),
        ("select", "SelectConfig"),
        ("train-classifier", "TrainClassifierConfig"),
    ],
)
def test_flags_are_generated_from_the_config_with_help_and_default(command, model, capsys):
    """One flag per config field (settings blocks as --block-field), each with its default in --help."""
    import lakelabel.pipeline.config as configs

    actions = build_parser([command])._subparsers._group_actions[0].choices[command]._actions
    dests = {a.dest for a in actions}
    fields = getattr(configs, model).model_fields
    for name, field in fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        wanted = {f"{name}.{s}" for s in sub} if isinstance(sub, dict) else {name}
        assert wanted <= dests, (command, wanted - dests)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert all(
        "(default:" in a.help for a in actions if a.dest in dests and "." in a.dest or a.dest in fields
    )


def test_ingest_on_a_terminal_shows_its_bar_and_succeeds(tmp_path: Path):
    """stderr on a pseudo-terminal: the progress bar is drawn (a tqdm without a total once crashed
    `if bar:` in every interactive terminal)."""
    from tests.terminal import run_on_a_terminal

    lake = tmp_path / "lake"
    make_plain_lake(lake, 12)
    proc, drawn = run_on_a_terminal(_ingest_command(lake, tmp_path / "root"))
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


def test_summaries_are_key_lines_on_a_terminal_and_json_when_piped_or_asked(capsys, monkeypatch):
    from lakelabel.cli import _emit

    summary = {
        "sharded": 12,
        "rejected": 0,
        "reasons": {"too_small": 2},
        "config": {"k": 1},
        "seconds": 1.23456,
    }
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    _emit(summary, argparse.Namespace(json=False))
    out = capsys.readouterr().out
    assert "sharded: 12\n" in out and "reasons: too_small=2" in out and "seconds: 1.235" in out
    assert "config" not in out and "{" not in out
    _emit(summary, argparse.Namespace(json=True))
    assert json.loads(capsys.readouterr().out) == summary
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    _emit(summary, argparse.Namespace(json=False))
    assert json.loads(capsys.readouterr().out) == summary


def test_an_unexpected_library_error_is_one_line_with_its_traceback_in_a_file(tmp_path, capsys, monkeypatch):
    """An error no check of lakelabel's foresaw (a library's own exception class, a message of many
    lines) is still one line, rc 2; the traceback goes to a file the line names."""
    import lakelabel.cli as cli

    class StoreError(Exception):
        pass

    def broken(args):
        raise StoreError("Object store error\n  ↳ connection reset\n  ↳ after 10 retries")

    monkeypatch.setattr(cli, "cmd_publish", broken)
    assert cli.main(["publish", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "StoreError: Object store error ↳ connection reset ↳ after 10 retries" in err
    log = err.rpartition("traceback in ")[2].rstrip(")")
    assert "Traceback" in Path(log).read_text() and "def broken" not in err
    Path(log).unlink()


def test_every_option_says_what_it_is_and_there_is_a_version(capsys):
    """No flag or positional without help (--sela-lr, a command's ROOT once had none); --version."""
    from lakelabel.cli import GENERATED_FLAGS

    for name in build_parser().__dict__["_subparsers"]._group_actions[0].choices:
        parser = build_parser([name])  # with its generated flags
        sub = parser._subparsers._group_actions[0].choices[name]
        for action in sub._actions:
            text = (action.help or "").split("(default:")[0].strip()
            assert text, (name, action.dest)
    assert "ingest" in GENERATED_FLAGS
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("lakelabel 0.")


def test_a_root_that_is_a_file_is_named_by_every_command(tmp_path, capsys):
    root = tmp_path / "root"
    root.write_text("not a folder")
    for command in (
        ["embed", str(root)],
        ["select", str(root)],
        ["publish", str(root)],
        ["labels", "ls", str(root)],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "ROOT must be a folder" in err and "is a file" in err, err


def test_ingest_summary_reads_well_on_a_re_run(tmp_path, monkeypatch, capsys):
    """A re-run: found counts every file under SRC (new: none), rates in plain numbers, no empty lines."""
    lake = tmp_path / "lake"
    make_plain_lake(lake, 5)
    base = ["ingest", str(lake), "--out", str(tmp_path / "root"), "--workers", "0", "--no-progress"]
    assert main([*base, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["found"], first["new"]) == (5, 5)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(base) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "found: 5" in lines and "new: 0" in lines and "already ingested: 5" in lines
    assert not [line for line in lines if line.endswith(":") or "e+" in line]


def test_an_empty_seed_csv_is_named(tmp_path):
    from lakelabel.pipeline.truth import read_seed_labels

    empty = tmp_path / "seeds.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"seed-label CSV '.*seeds.csv' is empty"):
        read_seed_labels(tmp_path, [empty])
