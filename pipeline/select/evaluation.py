"""Select's evaluation against a truth CSV (evaluation only, never training): the committed selection
is read part by part and each part's rows with a truth label are kept as a few compact columns
(~C + 16 bytes a row), so the metrics cost the truth file's size, not the lake's vectors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from lakelabel.models.calibration import expected_calibration_error
from lakelabel.pipeline.metrics import COVERAGES, hungarian_accuracy, precision_at, precision_coverage
from lakelabel.pipeline.truth import attach_keys, read_label_csv

#: what select keeps of a part for the metrics beyond its selection rows, one value per row
EXTRAS = ("uncalibrated", "baseline_confidence", "baseline_predicted")


def read_truth(root, truth_csv) -> pd.Series:
    """Truth class by key (the first of duplicated keys)."""
    return attach_keys(root, read_label_csv(truth_csv)).drop_duplicates("key").set_index("key").label


@dataclass
class Evaluation:
    """The compact columns of every evaluated row (non-seed rows with truth), gathered part by part."""

    classes: int
    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, part: pa.Table, truth: pd.Series, extras: dict[str, np.ndarray]) -> None:
        """Keep part ``part``'s (a selection part's table) evaluated rows; ``extras``: :data:`EXTRAS`."""
        y = truth.reindex(part.column("key").to_numpy(zero_copy_only=False))
        has = y.notna().to_numpy() & ~part.column("is_seed").to_numpy(zero_copy_only=False)
        rows = np.nonzero(has)[0]
        negatives = part.column("negative_labels").take(pa.array(rows))
        mask = np.zeros((len(rows), self.classes), dtype=bool)
        lengths = negatives.combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
        flat = negatives.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        mask[np.repeat(np.arange(len(rows)), lengths), flat] = True
        values = {
            "y": y.to_numpy()[has].astype(np.int64),
            "pred": part.column("predicted").to_numpy()[rows].astype(np.int64),
            "conf": part.column("confidence").to_numpy()[rows],
            "pos": part.column("role").to_numpy(zero_copy_only=False)[rows] == "positive",
            "neg": mask,
            **{name: np.asarray(extras[name])[rows] for name in EXTRAS if name in extras},
        }
        for name, value in values.items():
            self.columns.setdefault(name, []).append(value)

    def metrics(self, truth_csv) -> dict:
        """Precision/coverage of positives (UPS and confidence-only at equal coverage), negative accuracy,
        the precision–coverage curve of confidence ranking and the ECE (before and after calibration);
        with the baseline's columns, the same measures for the logistic regression on the seeds.
        Undefined measures (no positives, no negatives) are None."""
        c = {name: np.concatenate(parts) for name, parts in self.columns.items()}
        if not c or not len(c["y"]):
            raise ValueError(f"no selected image has ground truth in {str(truth_csv)!r}")
        y, pred, conf, pos, neg = c["y"], c["pred"], c["conf"], c["pos"], c["neg"]
        _, mapping = hungarian_accuracy(pred, y)  # cluster ids → classes (identity-like for seed classes)
        correct = np.array([mapping.get(int(p), -1) for p in pred]) == y
        n_pos = int(pos.sum())
        inv = {v: k for k, v in mapping.items()}
        true_col = np.array([inv.get(int(t), -1) for t in y])
        neg_wrong = int(neg[np.arange(len(y)), np.clip(true_col, 0, None)][true_col >= 0].sum())
        precision = precision_coverage(correct, conf)
        curve = [{"coverage": cov, "precision": round(precision_at(precision, cov), 4)} for cov in COVERAGES]
        n_neg = int(neg.sum())
        extra: dict = {}
        if "uncalibrated" in c:
            extra["ece_uncalibrated"] = round(
                expected_calibration_error(torch.as_tensor(c["uncalibrated"]), torch.as_tensor(correct)), 4
            )
        if "baseline_confidence" in c:
            b_conf, b_pred = c["baseline_confidence"], c["baseline_predicted"]
            _, b_map = hungarian_accuracy(b_pred, y)
            b_correct = np.array([b_map.get(int(p), -1) for p in b_pred]) == y
            b_curve = precision_coverage(b_correct, b_conf)
            extra["baseline_logreg"] = {
                "accuracy_full_coverage": round(float(b_correct.mean()), 4),
                "precision_at_50pct_coverage": round(precision_at(b_curve, 0.5), 4),
                "ece": round(
                    expected_calibration_error(torch.as_tensor(b_conf), torch.as_tensor(b_correct)), 4
                ),
            }
        return {
            "evaluated": len(y),
            "accuracy_full_coverage": round(float(correct.mean()), 4),
            "positives": n_pos,
            "coverage": round(n_pos / len(y), 4),
            "precision": round(float(correct[pos].mean()), 4) if n_pos else None,
            # the n_pos most confident images: confidence-only selection at UPS's coverage
            "confidence_only_precision_at_equal_coverage": round(float(precision[n_pos - 1]), 4)
            if n_pos
            else None,
            "negative_labels": n_neg,
            "negative_accuracy": round(1 - neg_wrong / n_neg, 4) if n_neg else None,
            "ece": round(expected_calibration_error(torch.as_tensor(conf), torch.as_tensor(correct)), 4),
            "precision_coverage_curve": curve,
            "precision_at_50pct_coverage": round(precision_at(precision, 0.5), 4),
            "mapping": {int(k): int(v) for k, v in mapping.items()},
            **extra,
        }
