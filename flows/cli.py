"""The ``lakelabel`` command line. Every subcommand has ``--help``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import pipeline.ingest_defaults as ingest_defaults


def _add_ingest_options(p: argparse.ArgumentParser) -> None:
    # defaults from the plain constants IngestConfig takes them from: no pydantic to build a parser
    defaults = argparse.Namespace(
        max_pixels=ingest_defaults.MAX_PIXELS,
        jpeg_quality=ingest_defaults.JPEG_QUALITY,
        shard_max_count=ingest_defaults.SHARD_MAX_COUNT,
        shard_max_bytes=ingest_defaults.SHARD_MAX_BYTES,
        batch_size=ingest_defaults.BATCH_SIZE,
    )
    p.add_argument("--config", help="YAML file with an `ingest:` section (flags override it)")
    p.add_argument("--max-side", type=int, help="resize so the longer side is at most N pixels")
    p.add_argument(
        "--max-pixels",
        type=int,
        help=f"reject larger images as decompression bombs (default {defaults.max_pixels})",
    )
    p.add_argument(
        "--jpeg-quality", type=int, help=f"quality of re-encoded JPEGs (default {defaults.jpeg_quality})"
    )
    p.add_argument(
        "--shard-max-count", type=int, help=f"samples per shard at most (default {defaults.shard_max_count})"
    )
    p.add_argument(
        "--shard-max-bytes", type=int, help=f"bytes per shard at most (default {defaults.shard_max_bytes})"
    )
    p.add_argument("--workers", type=int, help="decode processes (default: all cores; 0 = in-process)")
    p.add_argument("--batch-size", type=int, help=f"files per unit of work (default {defaults.batch_size})")
    p.add_argument(
        "--compiled-core",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run local upright RGB JPEGs through the compiled core when built (default: on)",
    )
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for the source, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def _ingest_config(args: argparse.Namespace):
    from pipeline.config import ConfigError, IngestConfig, load_yaml, validate_config

    data = {}
    if args.config:
        data = dict(load_yaml(args.config).get("ingest") or {})
    data.update(_flags_for(IngestConfig, args))
    options = dict(data.get("storage_options") or {})
    for item in args.storage_option:
        if "=" not in item:
            raise ConfigError(f"--storage-option must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key] = value
    if options:
        data["storage_options"] = options
    return validate_config(IngestConfig, data, "ingest")


def _start_ingest_early(args: argparse.Namespace):
    """:func:`pipeline.ingest.start_early` on the flags (defaults from ``pipeline.ingest_defaults``),
    or None: with ``--config`` or ``--storage-option`` the options are not known before the
    config is read, so the run starts normally."""
    if args.config or args.storage_option:
        return None
    from pipeline.ingest import start_early

    def flag(name: str, default):
        value = getattr(args, name)
        return default if value is None else value

    return start_early(
        args.src,
        args.out,
        workers=flag("workers", os.cpu_count() or 1),
        batch_size=flag("batch_size", ingest_defaults.BATCH_SIZE),
        max_pixels=flag("max_pixels", ingest_defaults.MAX_PIXELS),
        max_side=args.max_side,
        jpeg_quality=flag("jpeg_quality", ingest_defaults.JPEG_QUALITY),
        compiled_core=flag("compiled_core", True),
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    # Ingest does no linear algebra, but NumPy's OpenBLAS starts a spinning thread per core when
    # it loads: ~0.1 s of CPU taken from the workers. One thread, unless the user chose.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from pipeline.ingest import run_ingest

    early = _start_ingest_early(args)
    try:
        config = _ingest_config(args)  # loads pydantic (~0.1 s) while the early workers run
    except BaseException:
        if early is not None:
            early.abandon()
        raise
    bar = None
    if sys.stderr.isatty() and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit="file", desc="ingest", smoothing=0.1)
    try:
        summary = run_ingest(
            args.src, args.out, config, progress=bar.update if bar is not None else None, early=early
        )
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(summary, separators=(",", ":")))
    return 0


def _pretrain_config(args: argparse.Namespace):
    from pipeline.config import PretrainConfig, load_yaml, validate_config

    data = dict(load_yaml(args.config).get("pretrain") or {}) if args.config else {}
    data.update(_flags_for(PretrainConfig, args))
    return validate_config(PretrainConfig, data, "pretrain")


def _flags_for(model, args: argparse.Namespace) -> dict:
    """Command-line values given for ``model``'s fields (a flag per field: ``--image-size`` → image_size)."""
    return {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pipeline.pretrain import pretrain

    summary = pretrain(args.root, _pretrain_config(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, separators=(",", ":")))
    return 0


def _section_config(model, section: str, args: argparse.Namespace):
    """``model`` from the YAML file's ``section`` (if ``--config``) overridden by the flags given."""
    from pipeline.config import load_yaml, validate_config

    data = dict(load_yaml(args.config).get(section) or {}) if args.config else {}
    data.update(_flags_for(model, args))
    return validate_config(model, data, section)


def cmd_embed(args: argparse.Namespace) -> int:
    from pipeline.config import EmbedConfig
    from pipeline.embed import embed

    print(json.dumps(embed(args.root, _section_config(EmbedConfig, "embed", args)), separators=(",", ":")))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from pipeline.cluster import cluster
    from pipeline.config import ClusterConfig

    config = _section_config(ClusterConfig, "cluster", args)
    log = (lambda r: print(json.dumps(r), file=sys.stderr)) if args.verbose else None
    summary = cluster(args.root, config, args.embeddings, log=log)
    summary.pop("history", None)
    print(json.dumps(summary, separators=(",", ":")))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate_clusters, scores_table

    result = evaluate_clusters(args.root, args.truth, args.run, args.split)
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    else:
        print(f"{result['evaluated']} of {result['clustered']} clustered images have ground truth\n")
        print(scores_table(result))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from pipeline.config import SelectConfig
    from pipeline.select import select

    config = _section_config(SelectConfig, "select", args)
    log = (lambda r: print(json.dumps(r), file=sys.stderr)) if args.verbose else None
    summary = select(args.root, config, log=log)
    print(json.dumps(summary, separators=(",", ":"), default=str))
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
    from pipeline.config import ConfigError

    options = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--storage-option must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key] = value
    return options


def cmd_publish(args: argparse.Namespace) -> int:
    from pipeline.labels import publish_labels

    options = _storage_options(args.storage_option)
    record = publish_labels(args.root, args.selection, args.dest, storage_options=options)
    print(json.dumps(record, separators=(",", ":")))
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from pipeline.labels import default_dest, latest_run, list_runs, read_labels

    if not (args.root or args.dest):
        raise ValueError("give ROOT or --dest")
    dest = args.dest or default_dest(args.root)
    options = _storage_options(args.storage_option)
    if args.action == "ls":
        runs = list_runs(dest, options)
        if not runs:
            print(f"lakelabel: no label runs under {dest!r} (run `lakelabel publish ROOT`)", file=sys.stderr)
            return 1
        for record in runs:
            print(f"{record['run_id']}  rows={record['rows']}  roles={json.dumps(record['roles'])}")
    elif args.action == "latest":
        print(latest_run(dest, options))
    else:
        table = read_labels(dest, args.run, options).to_pandas()
        print(f"run {table.run_id.iloc[0] if len(table) else args.run}: {len(table)} rows\n")
        counts = table.groupby(["role", "label_name"], dropna=False).size().rename("images")
        print(counts.to_string())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import build_report

    meta = build_report(
        args.root,
        labels_run=args.labels,
        dest=args.dest,
        truth=args.truth,
        out=args.out,
        per_row=args.per_row,
        storage_options=_storage_options(args.storage_option),
    )
    print(json.dumps({k: meta[k] for k in ("run_id", "html", "metrics")}, separators=(",", ":")))
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from pipeline.config import TrainClassifierConfig
    from pipeline.train_classifier import train_classifier

    if isinstance(args.classes, str):
        args.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    config = _section_config(TrainClassifierConfig, "train_classifier", args)
    metrics = train_classifier(args.root, config)
    metrics.pop("history", None)
    print(json.dumps(metrics, separators=(",", ":")))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.curate import curate_flow
    from pipeline.config import load_config

    config = load_config(args.config or DEMO_CONFIG, source=args.source, root=args.root)
    result = curate_flow(config)
    print(json.dumps(result["timings"], separators=(",", ":")))
    print(f"shards:   {os.path.abspath(result['shards'])}")
    print(f"manifest: {os.path.abspath(result['manifest'])}")
    print(f"labels:   {os.path.abspath(result['labels'])}  (run {result['label_run']})")
    print(f"report:   {os.path.abspath(result['report'])}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_deployments
    from pipeline.config import load_config

    config = load_config(args.config or DEMO_CONFIG, source=args.source, root=args.root)
    serve_deployments(config, args.cron, None if args.weekly_cron == "off" else args.weekly_cron)
    return 0


DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakelabel",
        description="Pseudo-labels and curation for unlabeled image lakes.",
    )
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
        description="Train SimSiam, BYOL, Barlow Twins or SimCLR on ROOT/shards. Under torchrun it trains with DDP.",
    )
    p.add_argument("root", help="output root of `lakelabel ingest`")
    p.add_argument("--config", help="YAML file with a `pretrain:` section (flags override it)")
    p.add_argument("--method", help="simsiam | byol | barlow_twins | simclr")
    p.add_argument("--loss", help="default | wasserstein")
    p.add_argument("--backbone", help="resnet18 | resnet34 | resnet50")
    p.add_argument("--stem", help="auto | small | imagenet (fast on CPU at 32 px)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--optimizer", help="sgd | lars")
    p.add_argument("--lr", type=float, help="base LR for a total batch of 256")
    p.add_argument("--workers", type=int, help="DataLoader workers")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", help="auto | fp32 | bf16")
    p.add_argument(
        "--augment",
        help="auto = device (kornia, batched where the model runs) | loader (torchvision per image)",
    )
    p.add_argument(
        "--init-from",
        help="adapt a pretrained encoder: timm:<model> | torchvision:<model> (its architecture and input "
        "size), or a state-dict file for --backbone",
    )
    p.add_argument("--init-weights", help="weights file for a timm:/torchvision: --init-from")
    p.add_argument(
        "--backbone-lr-scale", type=float, help="LR factor of the pretrained backbone (default 0.1)"
    )
    p.add_argument("--knn-labels", help="label CSV (path,label[,split]) for the per-epoch kNN monitor")
    p.add_argument("--run-name", help="folder under ROOT/checkpoints")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "embed",
        help="embed every shard with a trained encoder (resumes shard by shard)",
        description="Write ROOT/embeddings/<encoder>-<sha12>/emb-NNNNNN.{npy,parquet}, one part per shard; "
        "shards already embedded by the same encoder are skipped.",
    )
    p.add_argument("root", help="output root of `lakelabel ingest`")
    p.add_argument("--config", help="YAML file with an `embed:` section (flags override it)")
    p.add_argument(
        "--encoder",
        help="pretrain run name (default 'default'), timm:<model> | torchvision:<model> (pretrained, frozen), "
        "a state-dict file, or 'random'",
    )
    p.add_argument(
        "--weights",
        help="weights file of a timm:/torchvision: encoder (default: the library's local cache; "
        "nothing downloads unless LAKELABEL_ALLOW_DOWNLOAD=1)",
    )
    p.add_argument(
        "--backbone",
        help="for a state-dict file: resnet18 | resnet34 | resnet50 | timm:<model> | torchvision:<model>",
    )
    p.add_argument("--stem", help="for a state-dict file: small | imagenet")
    p.add_argument("--image-size", type=int, help="input size (default: the encoder's training size)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="DataLoader decode workers")
    p.add_argument("--dtype", help="float16 | float32")
    p.add_argument("--precision", help="auto | fp32 | bf16")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "cluster",
        help="k-means, Sinkhorn-Knopp equipartition and SeLa heads (K clusters x T heads) on the embeddings",
        description="Write ROOT/clusters/RUN/assignments.parquet: per image the k-means cluster, the "
        "equipartitioned (Sinkhorn) cluster and each SeLa head's cluster and posterior.",
    )
    p.add_argument("root", help="output root holding embeddings")
    p.add_argument("--config", help="YAML file with a `cluster:` section (flags override it)")
    p.add_argument("--embeddings", help="encoder run name or embeddings directory name (default: newest)")
    p.add_argument("--k", type=int, help="clusters per head")
    p.add_argument("--heads", type=int, help="SeLa heads T")
    p.add_argument("--lam", type=float, help="Sinkhorn sharpness (default 25)")
    p.add_argument("--epochs", type=int, help="SeLa training epochs (0: k-means + Sinkhorn only)")
    p.add_argument("--label-updates", type=int, help="Sinkhorn label optimisations during training")
    p.add_argument("--head-hidden", type=int, help="0 = linear heads, else MLP hidden width")
    p.add_argument("--max-points-per-centroid", type=int, help="k-means training sample per centroid")
    p.add_argument("--kmeans-iters", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--run-name", help="folder under ROOT/clusters")
    p.add_argument("-v", "--verbose", action="store_true", help="print SeLa training progress to stderr")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser(
        "eval",
        help="score cluster assignments against a ground-truth CSV (ACC, NMI, ARI, purity)",
        description="Join ROOT/clusters/RUN to a CSV with path,label[,label_name,split] (paths relative to the "
        "lake; CIFAR-10's labels.csv.gz works as is) and score every label column.",
    )
    p.add_argument("root")
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
        "write ROOT/selections/RUN/ (selection.parquet, summary.json, review/review.csv + thumbnails). "
        "Fill the label column of review.csv and pass it back with --seed-labels.",
    )
    p.add_argument("root")
    p.add_argument("--config", help="YAML file with a `select:` section (flags override it)")
    p.add_argument("--labels-from", help="clusters | seed")
    p.add_argument(
        "--seed-labels",
        action="append",
        help="seed/reviewed label CSV (path or key, label[, label_name]); repeatable",
    )
    p.add_argument("--cluster-run", help="run under ROOT/clusters (default 'default')")
    p.add_argument(
        "--cluster-column", help="auto (scan if present, else head_0) | kmeans | sinkhorn | head_<t> | scan"
    )
    p.add_argument(
        "--embeddings", help="encoder run / embeddings directory (default: the cluster run's, or newest)"
    )
    p.add_argument("--naming", help="cluster naming from seed labels: hungarian | majority")
    p.add_argument("--method", help="ups | confidence")
    p.add_argument("--rounds", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--passes", type=int, help="MC-dropout passes")
    p.add_argument("--tau-p", type=float)
    p.add_argument("--kappa-p", type=float)
    p.add_argument("--tau-n", type=float)
    p.add_argument("--kappa-n", type=float)
    p.add_argument("--confidence-tau", type=float)
    p.add_argument("--class-balance", action="store_true", default=None)
    p.add_argument("--review-per-class", type=int)
    p.add_argument("--hidden", type=int, help="classifier hidden width (default 0: linear)")
    p.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="temperature-scale each round before thresholding (default: on)",
    )
    p.add_argument("--neighbours", type=int, help="nearest neighbours for neighbour smoothing (default 10)")
    p.add_argument(
        "--neighbour-smoothing",
        type=float,
        help="weight of the neighbours' probabilities (default 0.5; 0 = off)",
    )
    p.add_argument(
        "--finetune",
        action="store_true",
        default=None,
        help="full fine-tuning (for GPUs): each round trains the encoder + head on the shards, then re-embeds",
    )
    p.add_argument(
        "--finetune-encoder", help="checkpoint run or state-dict file (default: the embeddings' encoder)"
    )
    p.add_argument("--finetune-steps", type=int, help="fine-tuning steps per round (default 500)")
    p.add_argument("--finetune-batch-size", type=int)
    p.add_argument("--finetune-lr", type=float, help="AdamW learning rate of the encoder (default 1e-4)")
    p.add_argument("--workers", type=int, help="decode workers for fine-tuning and re-embedding")
    p.add_argument("--precision", help="auto (bf16 on CUDA) | fp32 | bf16")
    p.add_argument("--truth", help="ground-truth CSV for evaluation only")
    p.add_argument("--seed", type=int)
    p.add_argument("--run-name", help="folder under ROOT/selections")
    p.add_argument("-v", "--verbose", action="store_true", help="print each round to stderr")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "publish",
        help="publish a selection run to the label lake (versioned Parquet, atomic commit)",
        description="Write ROOT/selections/RUN as a new run of the label table at ROOT/labels or --dest "
        "(any fsspec URL). Publishing an unchanged selection again is a no-op.",
    )
    p.add_argument("root")
    p.add_argument("--selection", default="default", help="selection run (default 'default')")
    p.add_argument("--dest", help="label lake URL (default ROOT/labels)")
    _add_storage_option(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "labels",
        help="inspect the label lake: ls | show [RUN] | latest",
        description="List committed label runs, show one (per role and class counts), or print the latest run id.",
    )
    p.add_argument("action", choices=["ls", "show", "latest"])
    p.add_argument("root", nargs="?", help="ingest root (labels under ROOT/labels)")
    p.add_argument("--dest", help="label lake URL instead of ROOT/labels")
    p.add_argument("--run", help="run id for show (default: latest)")
    _add_storage_option(p)
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser(
        "train-classifier",
        help="retrain a torchvision classifier from a label run; evaluate it on a labeled hold-out",
        description="Train on ROOT's shards joined to a label run (cross-entropy on positives, negative-learning "
        "loss on negatives), evaluate on --holdout, save ROOT/classifiers/RUN/{model.pt,metrics.json}.",
    )
    p.add_argument("root")
    p.add_argument("--config", help="YAML file with a `train_classifier:` section (flags override it)")
    p.add_argument("--labels", help="label run id (default: the latest)")
    p.add_argument("--labels-dest", help="label lake URL (default ROOT/labels)")
    p.add_argument("--classes", help="comma-separated class names, e.g. automobile,truck")
    p.add_argument("--backbone", help="resnet18 | resnet34 | resnet50")
    p.add_argument("--stem", help="small | imagenet")
    p.add_argument(
        "--init-from",
        help="start from timm:<model> | torchvision:<model> (pretrained), a pretrain run, or a state-dict file",
    )
    p.add_argument("--init-weights", help="weights file for a timm:/torchvision: --init-from")
    p.add_argument("--image-size", type=int, help="default 32, or the --init-from encoder's size")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--negative-weight", type=float)
    p.add_argument("--confidence-weighting", action="store_true", default=None)
    p.add_argument("--holdout", help="labeled hold-out CSV (path,label_name[,split]); never trained on")
    p.add_argument("--holdout-split", help="split of the hold-out CSV to use (default test)")
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--run-name", help="folder under ROOT/classifiers")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML page (+ PNGs) to judge a label run",
        description="Sample montages per class, cluster and review queue, confidence/uncertainty histograms, "
        "per-class counts, run metadata; with --truth a precision-coverage curve and confusion matrix. "
        "Written to ROOT/reports/RUN/report.html (images inlined).",
    )
    p.add_argument("root")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        print(f"lakelabel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # e.g. ROOT is a file, or lies under one: say which path, not a traceback
        print(f"lakelabel {args.command}: error: {exc.strerror}: {exc.filename!r}", file=sys.stderr)
        return 2
    if argv is None and args.command == "ingest" and code == 0:
        # The program itself (not a caller of main): every output is closed and renamed and the
        # summary printed, so leave now; tearing down NumPy, Arrow and the rest takes ~0.07 s.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return code


if __name__ == "__main__":
    sys.exit(main())
