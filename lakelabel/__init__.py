"""lakelabel: pseudo-labels and curation for unlabeled image lakes.

Everything installs under this one name: ``lakelabel.pipeline`` (stage logic), ``lakelabel.models``
(torch modules and math), ``lakelabel.flows`` (Prefect), ``lakelabel.data_specs`` (contracts). The
public API below loads on first use, so ``import lakelabel`` costs no torch, Prefect or Arrow.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "LabeledShards": "lakelabel.pipeline.labeled_shards",
    "curate_flow": "lakelabel.flows.curate",
    "pretrain_flow": "lakelabel.flows.pretrain",
    "load_config": "lakelabel.pipeline.config",
    "LakelabelConfig": "lakelabel.pipeline.config",
    "read_labels": "lakelabel.data_specs.labels",
    "latest_labels": "lakelabel.data_specs.labels",
    "open_label_table": "lakelabel.data_specs.labels",
    "list_runs": "lakelabel.data_specs.labels",
    "read_selection": "lakelabel.data_specs.selections",
    "read_embeddings": "lakelabel.data_specs.embeddings",
    "read_assignments": "lakelabel.data_specs.clusters",
    "read_manifest": "lakelabel.data_specs.manifest",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'lakelabel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
