"""The select stage (``data_specs/selections.md``): rounds on a working sample (``rounds``), selection
part by part and the commit (``stage``), evaluation against a truth CSV (``evaluation``)."""

from lakelabel.pipeline.select.rounds import CrossFit
from lakelabel.pipeline.select.stage import (
    PartDone,
    SelectFit,
    apply_parts,
    commit_selection,
    fit_selection,
    select,
)

__all__ = ["CrossFit", "PartDone", "SelectFit", "apply_parts", "commit_selection", "fit_selection", "select"]
