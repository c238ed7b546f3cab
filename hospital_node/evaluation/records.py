"""Evaluation records (per-finding AUCs, ROC curves): plain data, no scikit-learn import."""

from __future__ import annotations

from dataclasses import dataclass

from data_tools.labels import FINDINGS


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (wrong shapes, non-binary labels, non-finite scores)."""


@dataclass(frozen=True)
class Evaluation:
    """Per-finding results of one model on one test set; None marks 'not available'.

    A finding is not available when the test set has no positive (or no negative) image
    for it: an AUC is undefined there, and reporting 0.5 would be a lie.
    """

    auc: tuple[float | None, ...]
    ci: tuple[tuple[float, float] | None, ...] | None  # None when computed without CIs
    n_pos: tuple[int, ...]
    n_neg: tuple[int, ...]
    mean_auc: float | None  # macro mean over available findings
    n_images: int
    n_patients: int
    ci_level: float | None = None
    findings: tuple[str, ...] = FINDINGS


@dataclass(frozen=True)
class RocCurve:
    """A (downsampled) ROC curve and its Youden operating point; thresholds fall as fpr rises.

    `thresholds[0]` is +inf (no image called positive), as scikit-learn returns it.
    """

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    thresholds: tuple[float, ...]
    threshold: float
    sensitivity: float
    specificity: float
