"""``LabeledShards``: the shards joined to a label run, for users' own trainers.

>>> ds = LabeledShards("ROOT", labels=None)          # the latest label run under ROOT/labels
>>> for sample in torch.utils.data.DataLoader(ds, batch_size=64): ...

Each sample is a dict: ``image`` (transformed tensor), ``label`` (class index, −1 for a
negative-only row), ``negatives`` (bool ``(C,)``: classes ruled out), ``weight`` (the label's
confidence when ``confidence_weighting``, else 1) and ``key``. Classes are the label names of the
run (or the ``classes`` asked for, in that order).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lakelabel.data_specs.labels import default_dest, read_labels
from lakelabel.data_specs.layout import Layout
from lakelabel.pipeline.shard_data import KeyedShards

TRAIN_ROLES = ("positive", "negative_only")


class LabeledShards(KeyedShards):
    """Stream the images of a label run with their labels, negatives and weights (see module doc)."""

    def __init__(
        self,
        root: str | Path,
        labels: str | None = None,
        *,
        dest: str | None = None,
        roles: tuple[str, ...] = TRAIN_ROLES,
        classes: list[str] | None = None,
        transform: Callable | None = None,
        exclude_keys: set[str] | None = None,
        confidence_weighting: bool = False,
        shuffle: int = 0,
        seed: int = 0,
    ):
        self.root = Path(root)
        table = read_labels(dest or default_dest(root), labels).to_pandas()
        names, samples = training_rows(table, roles, classes, exclude_keys, confidence_weighting)
        self.run_id = table.run_id.iloc[0] if len(table) else labels
        shards = [str(Layout(self.root).shard(s)) for s in set(table[table.key.isin(samples)].shard)]
        super().__init__(shards, samples, names, transform, shuffle, seed)


def training_rows(
    table,
    roles: tuple[str, ...] = TRAIN_ROLES,
    classes: list[str] | None = None,
    exclude_keys: set[str] | None = None,
    confidence_weighting: bool = False,
) -> tuple[list[str], dict[str, tuple[int, list[int], float]]]:
    """The class names of a label run's rows (a pandas table; ``classes`` in that order when given)
    and its trainable rows, ``{key: (class index or -1, ruled-out class indices, weight)}``: the
    positives and the negative-only rows with a negative among ``classes``."""
    unknown = set(roles) - set(table.role.unique()) - {"positive", "negative_only", "review", "unlabeled"}
    if unknown:
        raise ValueError(
            f"unknown role(s) {sorted(unknown)}; valid: positive, negative_only, review, unlabeled"
        )
    table = table[table.role.isin(roles)]
    if exclude_keys:
        table = table[~table.key.isin(exclude_keys)]
    # class index per label id, through the names (stable across runs that share names)
    positives = table[table.label.notna()]
    id_to_name = dict(zip(positives.label.astype(int), positives.label_name, strict=True))
    for ids in table.negative_labels:  # a class only ever ruled out still is a class of the run
        for c in ids:
            id_to_name.setdefault(int(c), f"class_{int(c)}")
    names = sorted(set(id_to_name.values())) if classes is None else list(classes)
    missing = set(names) - set(id_to_name.values())
    if classes is not None and missing:
        raise ValueError(
            f"class(es) {sorted(missing)} have no positive label in this run; it has "
            f"{sorted(set(id_to_name.values()))}"
        )
    index_of_name = {n: i for i, n in enumerate(names)}
    index_of_id = {i: index_of_name[n] for i, n in id_to_name.items() if n in index_of_name}
    samples: dict[str, tuple[int, list[int], float]] = {}
    for row in table.itertuples(index=False):
        label = -1 if row.label is None or row.label != row.label else index_of_id.get(int(row.label), -2)
        if label == -2:
            continue  # a positive of a class not asked for
        negatives = [index_of_id[c] for c in row.negative_labels if c in index_of_id]
        if label < 0 and not negatives:
            continue
        weight = float(row.confidence) if confidence_weighting else 1.0
        samples[row.key] = (label, negatives, weight)
    return names, samples
