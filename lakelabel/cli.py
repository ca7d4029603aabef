"""The ``lakelabel`` command line. Every subcommand has ``--help``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path


def _add_ingest_options(p: argparse.ArgumentParser) -> None:
    """The options IngestConfig has no flag for (its fields get theirs from the model)."""
    p.add_argument("--config", help="YAML file with an `ingest:` section (flags override it)")
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for the source, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def _ingest_config(args: argparse.Namespace):
    from lakelabel.pipeline.config import IngestConfig

    options = _storage_options(args.storage_option)
    config = _section_config(IngestConfig, "ingest", args)
    if options:
        config = config.model_copy(update={"storage_options": {**config.storage_options, **options}})
    return config


def cmd_ingest(args: argparse.Namespace) -> int:
    # Ingest does no linear algebra, but NumPy's OpenBLAS starts a spinning thread per core when
    # it loads: ~0.1 s of CPU taken from the workers. One thread, unless the user chose.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from lakelabel.pipeline.ingest import run_ingest

    config = _ingest_config(args)
    bar = None
    if sys.stderr.isatty() and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit=" files", desc="ingest (files found so far)", smoothing=0.1)
    try:
        summary = run_ingest(args.src, args.out, config, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    _emit(summary, args)
    return 0


def _pretrain_config(args: argparse.Namespace):
    from lakelabel.pipeline.config import PretrainConfig

    return _section_config(PretrainConfig, "pretrain", args)


def _emit(summary: dict, args: argparse.Namespace) -> None:
    """A command's summary: key lines on a terminal, one JSON line when piped or with ``--json``."""
    if getattr(args, "json", False) or not sys.stdout.isatty():
        print(json.dumps(summary, separators=(",", ":"), default=str))
        return
    for key, value in summary.items():
        if key in ("config", "history") or value is None or value == {}:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_short(v)}" for k, v in value.items() if not isinstance(v, dict | list))
        print(f"{key.replace('_', ' ')}: {_short(value)}")
    print("(--json for everything, as one JSON line)")


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, list):
        return f"[{len(value)} items]" if len(value) > 6 else ", ".join(_short(v) for v in value)
    return str(value)  # (paths whole: they are copied from here)


def _config_fields(model, prefix: str = ""):
    """``(dest, field)`` for every leaf field of ``model``; a settings block's fields as ``block.field``
    (one walk for building the flags and for reading them back)."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _config_fields(kind, f"{prefix}{name}.")
        else:
            yield prefix + name, field


def _flags_for(model, args: argparse.Namespace) -> dict:
    """Command-line values given for ``model``'s fields (``--image-size`` → image_size; a settings
    block's ``--sela-heads`` → {"sela": {"heads": …}}, merged into the YAML's block by the caller)."""
    given: dict = {}
    for dest, _ in _config_fields(model):
        value = getattr(args, dest, None)
        if value is not None:
            *blocks, name = dest.split(".")
            target = given
            for block in blocks:
                target = target.setdefault(block, {})
            target[name] = value
    return given


class Progress:
    """``progress(done, total)`` for a long stage: a bar on a terminal, else a plain line on stderr
    at most every ``every`` seconds (logs)."""

    def __init__(self, desc: str, unit: str, every: float = 30.0):
        self.desc, self.unit, self.every, self.bar, self.last = desc, unit, every, None, 0.0
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, unit=unit, smoothing=0.1)

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
        elif time.monotonic() - self.last >= self.every or done == total:
            self.last = time.monotonic()
            of = f" of {total:,}" if total is not None else ""
            print(f"{self.desc}: {done:,}{of} {self.unit}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_pretrain(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.pretrain import pretrain

    progress = Progress("pretrain", "step")
    try:
        summary = pretrain(args.root, _pretrain_config(args), progress=progress)
    finally:
        progress.close()
    if summary.get("resumed_from_step"):
        print(f"resumed from step {summary['resumed_from_step']} (the last checkpoint)", file=sys.stderr)
    if int(os.environ.get("RANK", "0")) == 0:
        _emit(summary, args)
    return 0


def _section_config(model, section: str, args: argparse.Namespace):
    """``model`` from the YAML file's ``section`` (if ``--config``) overridden by the flags given."""
    from lakelabel.pipeline.config import load_yaml, validate_config

    data = dict(load_yaml(args.config).get(section) or {}) if args.config else {}
    for key, value in _flags_for(model, args).items():
        data[key] = {**(data.get(key) or {}), **value} if isinstance(value, dict) else value
    return validate_config(model, data, section)


def cmd_embed(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.config import EmbedConfig
    from lakelabel.pipeline.embed import embed

    progress = Progress("embed", "image")
    try:
        _emit(embed(args.root, _section_config(EmbedConfig, "embed", args), progress=progress), args)
    finally:
        progress.close()
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.cluster import cluster
    from lakelabel.pipeline.config import ClusterConfig

    config = _section_config(ClusterConfig, "cluster", args)
    progress = Progress("cluster: assign", "part")

    def log(record: dict) -> None:  # the parts' progress always; the methods' records with -v
        if "assigned_parts" in record:
            progress(record["assigned_parts"], record["of"])
        elif args.verbose:
            print(json.dumps(record), file=sys.stderr)

    try:
        _emit(cluster(args.root, config, args.embeddings, log=log), args)
    finally:
        progress.close()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.evaluate import evaluate_clusters, scores_table

    result = evaluate_clusters(args.root, args.truth, args.run, args.split)
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    else:
        print(f"{result['evaluated']} of {result['clustered']} clustered images have ground truth\n")
        print(scores_table(result))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.config import SelectConfig
    from lakelabel.pipeline.select import select

    config = _section_config(SelectConfig, "select", args)
    progress = Progress("select: apply", "part")

    def log(record: dict) -> None:  # the parts' progress always; the rounds' records with -v
        if "selected_parts" in record:
            progress(record["selected_parts"], record["of"])
        elif args.verbose:
            print(json.dumps(record), file=sys.stderr)

    try:
        _emit(select(args.root, config, log=log), args)
    finally:
        progress.close()
    return 0


def _add_storage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option (repeatable)",
    )


def _storage_options(items: list[str]) -> dict:
    from lakelabel.pipeline.checks import ConfigError

    options = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--storage-option must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key] = value
    return options


def cmd_publish(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.labels import publish_labels

    options = _storage_options(args.storage_option)
    record = publish_labels(args.root, args.selection, args.dest, storage_options=options)
    _emit(record, args)
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from lakelabel.data_specs.labels import (
        LabelsNotFound,
        default_dest,
        has_old_layout,
        latest_run,
        list_runs,
        read_labels,
    )

    if not (args.root or args.dest):
        raise ValueError("give ROOT or --dest")
    dest = args.dest or default_dest(args.root)
    options = _storage_options(args.storage_option)
    if args.action == "ls":
        try:
            runs = list_runs(dest, options)
        except LabelsNotFound:
            if has_old_layout(dest, options):  # that message says how to convert it
                raise
            runs = []
        if not runs:
            raise LabelsNotFound(f"no label runs under {dest!r} (run `lakelabel publish ROOT`)")
        if args.json or not sys.stdout.isatty():  # one JSON line (a list of the runs' records)
            print(json.dumps(runs, separators=(",", ":"), default=str))
        else:
            for r in runs:
                print(f"v{r['version']}  {r['run_id']}  rows={r['rows']}  roles={json.dumps(r['roles'])}")
    elif args.action == "latest":
        print(latest_run(dest, options))
    elif args.action == "show":
        version = int(args.version) if args.version and args.version.isdigit() else args.version
        table = read_labels(dest, args.run, options, version=version).to_pandas()
        at = f" (table version {args.version})" if args.version else ""
        print(f"run {table.run_id.iloc[0] if len(table) else args.run}{at}: {len(table)} rows\n")
        counts = table.groupby(["role", "label_name"], dropna=False).size().rename("images")
        print(counts.to_string())
    else:  # the store's maintenance: vacuum | migrate
        from lakelabel.pipeline.label_stores import open_store

        store = open_store(dest, options)
        if args.action == "vacuum" and args.keep is None:
            raise ValueError("labels vacuum needs --keep N (the newest N runs stay)")
        _emit(store.vacuum(args.keep) if args.action == "vacuum" else store.migrate(), args)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.report import build_report

    meta = build_report(
        args.root,
        labels_run=args.labels,
        dest=args.dest,
        truth=args.truth,
        out=args.out,
        per_row=args.per_row,
        storage_options=_storage_options(args.storage_option),
    )
    _emit({k: meta[k] for k in ("run_id", "html", "metrics")}, args)
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.config import TrainClassifierConfig
    from lakelabel.pipeline.train_classifier import train_classifier

    if args.classes:  # --classes a b or --classes a,b
        args.classes = [c.strip() for item in args.classes for c in item.split(",") if c.strip()]
    config = _section_config(TrainClassifierConfig, "train_classifier", args)
    progress = Progress("train-classifier", "step")
    try:
        metrics = train_classifier(args.root, config, progress=progress)
    finally:
        progress.close()
    metrics.pop("history", None)
    _emit(metrics, args)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.predict import predict

    progress = None if args.no_progress else Progress("predict", "image")
    try:
        summary = predict(args.model_dir, args.images, args.out, args.batch_size, args.workers, progress)
    finally:
        if progress is not None:
            progress.close()
    for source in summary["unreadable"]:
        print(f"lakelabel predict: unreadable, skipped: {source}", file=sys.stderr)
    _emit(
        {
            **summary,
            "unreadable": len(summary["unreadable"]),
            "classes": {k: int(v) for k, v in summary["classes"].items()},
        },
        args,
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # offline by default: no telemetry, no notice about it
    # Prefect's 20 s default for the ephemeral server timed out on a loaded 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    signal.signal(signal.SIGINT, _stop_now)  # Prefect turns Ctrl-C into minutes of retries
    from lakelabel.pipeline.config import load_config

    config = load_config(args.config or DEMO_CONFIG, source=args.source, root=args.root)
    check_run_inputs(config)  # before Prefect: a bad path fails in a second, not after the stages
    from lakelabel.flows.server import start_temporary_server

    start_temporary_server()  # (before Prefect loads: it reads PREFECT_API_URL once)
    from lakelabel.flows.curate import curate_flow
    from lakelabel.flows.progress import set_sink

    log = run_log(config.root)
    bars = StageBars()
    if not args.verbose:  # Prefect's lines go to the run's log; the terminal shows a bar per stage
        prefect_logs_to(log)
        set_sink(bars)
    try:
        result = curate_flow(config)
    except Exception as exc:  # the traceback is in the log already (Prefect's), and once more here
        bars.close()
        import traceback

        with open(log, "a") as f:
            traceback.print_exc(file=f)
        print(f"lakelabel run: error: {_one_line(exc)} (the run's log: {log})", file=sys.stderr)
        return 2
    bars.close()
    summary = {
        "labels": os.path.abspath(result["labels"]),
        "label_run": result["label_run"],
        "report": os.path.abspath(result["report"]),
        "shards": os.path.abspath(result["shards"]),
        "manifest": os.path.abspath(result["manifest"]),
        "seconds": result["timings"],
        "log": str(log),
    }
    _emit(summary, args)
    for warning in result["select"].get("warnings", []):
        print(f"lakelabel: warning: {warning}", file=sys.stderr)
    return 0


def run_log(root: str) -> Path:
    """``ROOT/logs/run-<UTC time>.log``: where `lakelabel run` keeps Prefect's lines and tracebacks."""
    from datetime import UTC, datetime

    folder = Path(root) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.log").resolve()


def prefect_logs_to(path: Path) -> None:
    """Prefect's terminal lines (flow and task runs, the server's errors) into ``path`` instead; they
    still reach the Prefect server and UI."""
    import logging

    from prefect.logging.configuration import setup_logging

    setup_logging()  # (later calls only adjust levels: the handlers set here stay)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s"))
    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
        console = [
            h
            for h in getattr(logger, "handlers", [])
            if type(h) is not logging.FileHandler and isinstance(h, logging.StreamHandler)
        ]
        for h in console:
            logger.removeHandler(h)
        if console:
            logger.addHandler(handler)


class StageBars:
    """The progress sink of `lakelabel run` on a terminal: one bar per stage, left when it ends;
    off a terminal, a plain line per stage at most every 30 s (the :class:`Progress` of the CLI)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.progress: Progress | None = None

    def __call__(self, stage: str, done: int | None, total: int | None, unit: str) -> None:
        if stage != self.stage:
            self.close()
            if done is None:
                return
            self.stage, self.progress = stage, Progress(stage, unit)
        if done is None:  # the stage is done: its bar full
            if self.progress is not None and self.progress.bar is not None and self.progress.bar.total:
                self.progress(self.progress.bar.total, self.progress.bar.total)
            self.close()
        elif self.progress is not None:
            if unit != self.progress.unit:  # the stage's own progress replaces the one-step bar
                self.progress.unit = unit
                if self.progress.bar is not None:
                    self.progress.bar.unit = unit
            self.progress(done, total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.stage, self.progress = None, None


def _stop_now(signum: int, frame: object) -> None:
    """Ctrl-C in `lakelabel run`: stop at once, with one line. Every stage writes temp-then-rename
    with a commit marker last, so nothing half-written counts and a re-run resumes after the last
    committed step. Worker processes and Prefect's ephemeral server are stopped first."""
    print(
        "lakelabel: interrupted; nothing half-written is kept, run the same command again to resume",
        file=sys.stderr,
        flush=True,
    )
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
    server = getattr(sys.modules.get("lakelabel.flows.server"), "SERVER", None)
    if server is not None:
        server.terminate()
    os._exit(130)


def check_run_inputs(config) -> None:
    """What `lakelabel run` reads and where it writes, checked before any stage: the source, the
    seed and truth CSVs, ROOT and the label table's folder (neither may be or lie under a file)."""
    from lakelabel.pipeline.inputs import input_file, output_folder, output_url
    from lakelabel.pipeline.lake import resolve_source

    output_folder(config.root, "root")
    if config.labels_dest:
        output_url(config.labels_dest, "labels_dest")
    if config.source is not None:
        resolve_source(config.source, config.ingest.storage_options)
    for csv in config.select.seed_labels:
        input_file(csv, "seed-label CSV (select.seed_labels)")
    if config.select.truth:
        input_file(config.select.truth, "truth CSV (select.truth)")


def cmd_suggest(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.config import SuggestConfig
    from lakelabel.pipeline.suggest import suggest

    if args.classes:  # --classes a b or --classes a,b
        args.classes = [c.strip() for item in args.classes for c in item.split(",") if c.strip()]
    summary = suggest(args.root, _section_config(SuggestConfig, "suggest", args))
    _emit(summary, args)
    if sys.stderr.isatty():
        print(f"label them: lakelabel review {args.root} --batch {summary['batch']}", file=sys.stderr)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from lakelabel.pipeline.review_page import find_batch, serve

    batch = find_batch(args.root, args.batch)
    url = f"http://{args.host}:{args.port}/"
    print(
        f"lakelabel review: batch {batch.name} at {url} (Ctrl-C stops; every answer is saved)",
        file=sys.stderr,
    )
    serve(batch, args.host, args.port)
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    from lakelabel.flows.deploy import list_schedules, set_schedules

    names = args.deployments or list(DEPLOYMENTS)
    rows = list_schedules(names) if args.action == "ls" else set_schedules(names, args.action == "on")
    if getattr(args, "json", False) or not sys.stdout.isatty():
        print(json.dumps(rows, separators=(",", ":")))
    else:
        for row in rows:
            print(f"{row['deployment']}  {row['schedule']}  {'on' if row['active'] else 'off'}")
    return 0


#: the deployments of prefect.yaml
DEPLOYMENTS = ("curate/nightly-curate", "review/relabel-on-review", "pretrain/weekly-pretrain")


def cmd_serve(args: argparse.Namespace) -> int:
    from lakelabel.flows.serve import serve_deployments
    from lakelabel.pipeline.config import load_config

    config = load_config(args.config or DEMO_CONFIG, source=args.source, root=args.root)
    serve_deployments(config, args.cron, None if args.weekly_cron == "off" else args.weekly_cron)
    return 0


#: the embedded default config, shipped in lakelabel.flows (found without importing the flows)
DEMO_CONFIG = os.path.join(find_spec("lakelabel.flows").submodule_search_locations[0], "configs", "demo.yaml")


#: the positional ROOT of the commands after ingest
ROOT_HELP = "the lake's output folder (`lakelabel ingest --out ROOT`): shards, manifest, stage outputs"

#: subcommands whose flags are generated from their config model (one flag per field)
GENERATED_FLAGS = {
    "ingest": "IngestConfig",
    "pretrain": "PretrainConfig",
    "embed": "EmbedConfig",
    "cluster": "ClusterConfig",
    "select": "SelectConfig",
    "train-classifier": "TrainClassifierConfig",
    "suggest": "SuggestConfig",
}


def add_config_flags(p: argparse.ArgumentParser, model) -> None:
    """One flag per field of ``model``: ``--field-name``, a settings block's as ``--block-field``;
    help is the field's description and default (the config model is the one place defaults live)."""
    import types
    import typing

    for dest, field in _config_fields(model):
        kind = field.annotation
        if typing.get_origin(kind) is dict:  # mappings live in YAML (ingest adds --storage-option)
            continue
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
        many = typing.get_origin(base) is list
        base = typing.get_args(base)[0] if many else base
        if typing.get_origin(base) is typing.Annotated:  # a choice (checks.choice): its Literal
            base = typing.get_args(base)[0]
        choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else None
        base = str if choices else base
        default = field.get_default(call_default_factory=True)
        help_ = f"{(field.description or '').rstrip('.')} (default: {default})".lstrip()
        flag = "--" + dest.replace(".", "-").replace("_", "-")
        metavar = dest.rpartition(".")[2].upper()
        if base is bool:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif many:
            p.add_argument(
                flag,
                dest=dest,
                type=base,
                nargs="+",
                action="extend",
                choices=choices,
                metavar=metavar,
                help=help_,
            )
        else:
            p.add_argument(flag, dest=dest, type=base, choices=choices, metavar=metavar, help=help_)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakelabel",
        description="Pseudo-labels and curation for unlabeled image lakes.",
    )
    from lakelabel import __version__

    parser.add_argument("--version", action="version", version=f"lakelabel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "ingest",
        help="validate and de-duplicate a lake into WebDataset shards + a Parquet manifest",
        description="Ingest SRC (folder, fsspec URL such as s3://bucket/prefix, or .tar/.tar.gz/.zip) into "
        "ROOT/shards and ROOT/manifest. Safe to re-run: only files not yet in the manifest are processed.",
    )
    p.add_argument("src", help="lake folder, fsspec URL or archive")
    p.add_argument("--out", required=True, help="output root (local folder)")
    _add_ingest_options(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "pretrain",
        help="train a self-supervised encoder from ROOT's shards (resumes from ROOT/checkpoints/RUN/last.pt)",
        description="Train SimSiam, BYOL, Barlow Twins or SimCLR on ROOT/shards. Under torchrun it trains "
        "with DDP.",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--config", help="YAML file with a `pretrain:` section (flags override it)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "embed",
        help="embed every shard with a trained encoder (resumes shard by shard)",
        description="Write ROOT/embeddings/<encoder>-<sha12>/emb-NNNNNN.{npy,parquet}, one part per shard; "
        "shards already embedded by the same encoder are skipped.",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--config", help="YAML file with an `embed:` section (flags override it)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "cluster",
        help="cluster the embeddings: k-means, Sinkhorn equipartition, SeLa heads, SCAN",
        description="Write ROOT/clusters/RUN/ (parts/asg-NNNNNN.parquet, one per embeddings part, "
        "committed by assignments.json): per image a cluster from each method in --methods, fitted "
        "on a bounded sample (--sample) and assigned part by part (each method's settings: "
        "--<method>-<setting>).",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--config", help="YAML file with a `cluster:` section (flags override it)")
    p.add_argument("--embeddings", help="encoder run name or embeddings directory name (default: newest)")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="print the methods' training records to stderr"
    )
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser(
        "eval",
        help="score cluster assignments against a ground-truth CSV (ACC, NMI, ARI, purity)",
        description="Join ROOT/clusters/RUN to a CSV with path,label[,label_name,split] (paths relative to "
        "the lake; CIFAR-10's labels.csv.gz works as is) and score every label column.",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--truth", required=True, help="ground-truth CSV (.csv or .csv.gz)")
    p.add_argument("--run", default="default", help="cluster run name (default 'default')")
    p.add_argument("--split", help="only truth rows of this split (e.g. test)")
    p.add_argument("--json", action="store_true", help="full JSON (per-cluster purity and sizes)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "select",
        help="UPS pseudo-label selection (MC dropout; positive and negative labels; a review queue)",
        description="Train a dropout classifier on the embeddings from cluster labels (no human labels) or "
        "seed-label CSVs, select confident-and-certain positives and certain negatives for R rounds, and "
        "write ROOT/selections/RUN/ (selection.parquet, summary.json) and the review queue as a batch under "
        "ROOT/batches. Label it with `lakelabel review ROOT`: the next select learns from every answer.",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--config", help="YAML file with a `select:` section (flags override it)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each round to stderr")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "suggest",
        help="choose the images a person should label first (TypiClust), as a review batch",
        description="Pick --budget images from the embeddings (TypiClust: the most typical image of each "
        "of the largest clusters no labelled image covers) and write them as ROOT/batches/NAME "
        "(review.csv, thumbnails, classes.json); label them with `lakelabel review`.",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--config", help="YAML file with a `suggest:` section (flags override it)")
    p.set_defaults(func=cmd_suggest)

    p = sub.add_parser(
        "review",
        help="a page on 127.0.0.1 to label a review batch by keyboard (1-9, 0, n, s, u)",
        description="Serve a review batch (default: the newest with unanswered images): its images large, "
        "the classes as buttons and keys 1-9 (0 the tenth), n none of these, s skip, u undo. Each answer is "
        "written into the batch's review.csv at once; the next select learns from it.",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--batch", help="batch name under ROOT/batches, or a batch folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser(
        "publish",
        help="publish a selection run to the label lake (versioned Parquet, atomic commit)",
        description="Write ROOT/selections/RUN as a new run of the label table at ROOT/labels or --dest "
        "(any fsspec URL). Publishing an unchanged selection again is a no-op.",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--selection", default="default", help="selection run (default 'default')")
    p.add_argument("--dest", help="label lake URL (default ROOT/labels)")
    _add_storage_option(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "labels",
        help="the label table: ls | show | latest | vacuum --keep N | migrate",
        description="The label table (a Delta Lake table): list its runs with their table versions, show one "
        "run (per role and class counts; --version for the table as it was), print the latest run id, "
        "keep only the newest N runs (vacuum), or convert a pre-Delta label folder (migrate).",
    )
    p.add_argument(
        "action",
        choices=["ls", "show", "latest", "vacuum", "migrate"],
        help="ls: the runs; show: one run's counts; latest: its id; vacuum: keep --keep N; migrate: convert",
    )
    p.add_argument("root", nargs="?", help="ingest root (labels under ROOT/labels)")
    p.add_argument("--dest", help="label table URL instead of ROOT/labels")
    p.add_argument("--run", help="run id for show (default: the newest)")
    p.add_argument("--version", help="show: read the table as of this version number or ISO timestamp")
    p.add_argument("--keep", type=int, help="vacuum: how many of the newest runs stay (at least 1)")
    _add_storage_option(p)
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser(
        "train-classifier",
        help="retrain a classifier from a label run, with same-run baselines; export TorchScript and ONNX",
        description="Train a head on the label run's embeddings (mode head, CPUs) or the whole network "
        "from it (mode finetune, GPUs) on positives and negative labels; score it and its baselines (seeds "
        "only, an oracle) on --holdout; write ROOT/classifiers/RUN/ (model.ts, model.onnx, card.json, "
        "README.md, metrics.json).",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--config", help="YAML file with a `train_classifier:` section (flags override it)")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser(
        "predict",
        help="classify images (files, folders, shards) with a retrained classifier, to Parquet",
        description="Run ROOT/classifiers/RUN (its model.ts) over image files, folders (recursively) or "
        "WebDataset shards (.tar); write a Parquet of source, class, probability. Unreadable images are "
        "listed and skipped.",
    )
    p.add_argument("model_dir", help="a classifier folder: ROOT/classifiers/RUN")
    p.add_argument("images", nargs="+", help="image files, folders or .tar shards")
    p.add_argument(
        "--out", default="predictions.parquet", help="the Parquet to write (default predictions.parquet)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument(
        "--workers", type=int, help="decode processes (default: none on up to 4 cores, else half the cores)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML page (+ PNGs) to judge a label run",
        description="Sample montages per class, cluster and review queue, confidence/uncertainty histograms, "
        "per-class counts, run metadata; with --truth a precision-coverage curve and confusion matrix. "
        "Written to ROOT/reports/RUN/report.html (images inlined).",
    )
    p.add_argument("root", help=ROOT_HELP)
    p.add_argument("--labels", help="label run id (default: the latest)")
    p.add_argument("--truth", help="ground-truth CSV (path,label[,label_name]) for evaluation only")
    p.add_argument("--dest", help="label lake URL (default ROOT/labels)")
    p.add_argument("--out", help="output folder (default ROOT/reports/RUN)")
    p.add_argument("--per-row", type=int, default=12, help="images per montage row (default 12)")
    _add_storage_option(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "run",
        help="run the curate flow end to end (default: the embedded demo lake, local Prefect)",
        description="Run curate_flow with a config (YAML). Without one, a demo lake is generated under "
        "./lakelabel-demo and processed with a local (ephemeral) Prefect.",
    )
    p.add_argument("--config", help="YAML config (see flows/configs/example.yaml)")
    p.add_argument("--source", help="override the config's source")
    p.add_argument("--root", help="override the config's output root")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="Prefect's log lines on the terminal instead of the bars"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "serve",
        help="serve the nightly curate and weekly pretrain deployments from this process (flow.serve)",
        description="Register and run the scheduled deployments in one process (needs PREFECT_API_URL for a "
        "lasting server). Stopping this process pauses them. For workers, use prefect.yaml instead.",
    )
    p.add_argument("--config", help="YAML config (default: flows/configs/demo.yaml)")
    p.add_argument("--source", help="override the config's source")
    p.add_argument("--root", help="override the config's output root")
    p.add_argument("--cron", default="0 2 * * *", help="curate schedule (default nightly 02:00 UTC)")
    p.add_argument("--weekly-cron", default="0 3 * * 0", help="pretrain schedule, or 'off'")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "schedules",
        help="list or switch on/off the schedules of the deployed deployments (prefect.yaml's start off)",
        description="ls | on | off the cron schedules of deployments on the Prefect server at "
        f"PREFECT_API_URL (default: {', '.join(DEPLOYMENTS)}).",
    )
    p.add_argument("action", choices=["ls", "on", "off"], help="list, switch on, or switch off")
    p.add_argument("deployments", nargs="*", metavar="FLOW/DEPLOYMENT", help="deployments (default: both)")
    p.set_defaults(func=cmd_schedules)
    for name, command_parser in sub.choices.items():
        if name not in ("eval", "serve", "review") and "--json" not in command_parser._option_string_actions:
            command_parser.add_argument(
                "--json",
                action="store_true",
                help="print the summary as one JSON line (the default when piped)",
            )
    command = next((a for a in argv or () if not a.startswith("-")), None)
    if command in GENERATED_FLAGS:  # only for the command run: `labels ls` loads no config models
        import lakelabel.pipeline.config as configs

        add_config_flags(sub.choices[command], getattr(configs, GENERATED_FLAGS[command]))
    return parser


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (some libraries' span several)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename!r}"  # e.g. ROOT lies under a file: say which path
    return " ".join(str(exc).split()) or type(exc).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each (``lakelabel: warning: …``), not Python's file:line form."""
    print(f"lakelabel: warning: {_one_line(Warning(message))}", file=sys.stderr)


#: errors whose message says all: the bad value, file or state (ConfigError and ContractError are
#: ValueErrors, LabelsNotFound a FileNotFoundError)
EXPECTED_ERRORS = (ValueError, RuntimeError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        for name in ("root", "out"):  # ROOT must be a folder: said at once, whatever the command
            value = getattr(args, name, None)
            if isinstance(value, str) and "://" not in value:
                from lakelabel.pipeline.inputs import output_folder

                output_folder(value, "ROOT")
        code = args.func(args)
    except KeyboardInterrupt:  # outputs are committed temp-then-rename: a re-run resumes
        print(f"lakelabel {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _one_line(exc)
        if not isinstance(exc, EXPECTED_ERRORS):  # a library's own error: its traceback to a file
            import tempfile
            import traceback

            with tempfile.NamedTemporaryFile(
                "w", prefix=f"lakelabel-{args.command}-", suffix=".log", delete=False
            ) as log:
                traceback.print_exc(file=log)
            message = f"{type(exc).__name__}: {message} (traceback in {log.name})"
        print(f"lakelabel {args.command}: error: {message}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
