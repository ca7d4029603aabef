"""Where every stage's output lives under a lake ROOT: the one place that joins ROOT to a stage's
folder (``Layout(root).clusters(run).commit``). See ``README.md`` for the tree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckpointPaths:
    """``ROOT/checkpoints/<run>/`` of a pretrain run (``checkpoints.md``)."""

    dir: Path

    @property
    def encoder(self) -> Path:
        """The trained backbone's state dict (written when the run finishes)."""
        return self.dir / "encoder.pt"

    @property
    def meta(self) -> Path:
        """``encoder.json``: what rebuilds the backbone (architecture, stem, input size, normalisation)."""
        return self.dir / "encoder.json"

    @property
    def last(self) -> Path:
        """``last.pt``: the resumable training state."""
        return self.dir / "last.pt"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"


@dataclass(frozen=True)
class ClusterRunPaths:
    """``ROOT/clusters/<run>/``: ``parts/asg-NNNNNN.parquet`` (one per embeddings part),
    ``assignments.json`` (the commit), ``summary.json``, method state; runs written before parts hold
    one ``assignments.parquet`` (the legacy commit)."""

    dir: Path

    @property
    def parts(self) -> Path:
        return self.dir / "parts"

    @property
    def commit(self) -> Path:
        return self.dir / "assignments.json"

    @property
    def assignments(self) -> Path:
        """The single-file assignments of a run written before parts (read, never written)."""
        return self.dir / "assignments.parquet"

    @property
    def committed(self) -> bool:
        return self.commit.is_file() or self.assignments.is_file()

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"


@dataclass(frozen=True)
class SelectionRunPaths:
    """``ROOT/selections/<run>/``: ``parts/sel-NNNNNN.parquet`` (one per embeddings part),
    ``selection.json`` (the commit), ``summary.json``; runs written before parts hold one
    ``selection.parquet`` (the legacy commit)."""

    dir: Path

    @property
    def parts(self) -> Path:
        return self.dir / "parts"

    @property
    def commit(self) -> Path:
        return self.dir / "selection.json"

    @property
    def selection(self) -> Path:
        """The single-file selection of a run written before parts (read, never written)."""
        return self.dir / "selection.parquet"

    @property
    def committed(self) -> bool:
        return self.commit.is_file() or self.selection.is_file()

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"


@dataclass(frozen=True)
class BatchPaths:
    """``ROOT/batches/<name>/``: a review batch (``batches.md``): ``review.csv``, ``classes.json``,
    ``thumbs/<key>.png``."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def csv(self) -> Path:
        """The batch's rows; a person's answers are written into it, one atomic rewrite per answer."""
        return self.dir / "review.csv"

    @property
    def classes(self) -> Path:
        """``classes.json``: the class ids and names a person chooses from, in id order."""
        return self.dir / "classes.json"

    @property
    def thumbs(self) -> Path:
        return self.dir / "thumbs"


@dataclass(frozen=True)
class Layout:
    """The folders of a lake ROOT, one property or method per stage output."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def shards(self) -> Path:
        """``shards/shard-NNNNNN.tar`` (``shards.md``)."""
        return self.root / "shards"

    def shard(self, name: str) -> Path:
        return self.shards / name

    @property
    def manifest(self) -> Path:
        """``manifest/part-NNNNNN.parquet`` (``manifest.md``)."""
        return self.root / "manifest"

    @property
    def ingest_runs(self) -> Path:
        """``manifest/_runs/<run_id>.json``: each ingest run's summary."""
        return self.manifest / "_runs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, run: str) -> CheckpointPaths:
        """``checkpoints/<run>/`` of a pretrain run."""
        return CheckpointPaths(self.checkpoints / run)

    @property
    def embeddings(self) -> Path:
        """``embeddings/<encoder>-<sha12>/`` (``embeddings.md``)."""
        return self.root / "embeddings"

    @property
    def clusters_dir(self) -> Path:
        return self.root / "clusters"

    def clusters(self, run: str = "default") -> ClusterRunPaths:
        """``clusters/<run>/`` (``clusters.md``)."""
        return ClusterRunPaths(self.clusters_dir / run)

    @property
    def selections_dir(self) -> Path:
        return self.root / "selections"

    def selections(self, run: str = "default") -> SelectionRunPaths:
        """``selections/<run>/`` (``selections.md``)."""
        return SelectionRunPaths(self.selections_dir / run)

    @property
    def batches_dir(self) -> Path:
        return self.root / "batches"

    def batch(self, name: str) -> BatchPaths:
        """A review batch (written by suggest or select, answered on the review page)."""
        return BatchPaths(self.batches_dir / name)

    @property
    def labels(self) -> Path:
        """``labels/``: the label table when no other destination is given (``labels.md``)."""
        return self.root / "labels"

    def report(self, run: str) -> Path:
        """``reports/<label run>/``: ``report.html`` and its figures."""
        return self.root / "reports" / run

    def classifier(self, run: str) -> Path:
        """``classifiers/<run>/``: a classifier retrained from a label run."""
        return self.root / "classifiers" / run
