"""What a label store is: where published label runs live (``data_specs/labels.md``), behind one
interface, as img2dataset's writers share one (the stages and the CLI use only this)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, ClassVar

import pyarrow as pa


class LabelStore(ABC):
    """A label table at ``dest`` (``storage_options`` as fsspec takes them): published runs, each one
    atomic commit with its lineage record, listed in commit order (the newest is the latest)."""

    kind: ClassVar[str]  # its registry key

    def __init__(self, dest: str, storage_options: dict | None = None):
        self.dest, self.storage_options = dest, storage_options

    @abstractmethod
    def runs(self) -> list[dict[str, Any]]:
        """Each published run's lineage record (with ``version``, ``rows``), oldest first."""

    @abstractmethod
    def read(self, run_id: str | None = None, version: int | str | datetime | None = None) -> pa.Table:
        """One run's rows (``None``: the latest), as the store is or was at ``version``, validated."""

    @abstractmethod
    def append(self, parts: Callable[[], Iterator[pa.Table]], record: dict) -> dict[str, Any]:
        """Publish one run (``parts()``: its contract rows of one ``run_id``, part by part, read again on
        a retry; ``record``: its lineage with a ``content_sha256``) in one atomic commit, never holding
        the whole run; returns the record with its ``version`` and ``skipped`` (a run of the same
        content was there: nothing written)."""

    @abstractmethod
    def vacuum(self, keep: int) -> dict[str, Any]:
        """Keep the newest ``keep`` runs (at least 1) and remove every file no kept version needs."""

    @abstractmethod
    def migrate(self) -> dict[str, Any]:
        """Convert an earlier layout at ``dest`` into this store's, losing nothing; a no-op when none."""
