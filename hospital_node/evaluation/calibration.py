"""Calibration of predicted probabilities: reliability-diagram bins, expected calibration error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_tools.labels import FINDINGS
from hospital_node.evaluation.records import EvaluationError

DEFAULT_BINS = 10


@dataclass(frozen=True)
class CalibrationBin:
    """Images whose predicted probability fell in [lower, upper) (the last bin includes 1)."""

    lower: float
    upper: float
    count: int
    mean_predicted: float | None  # None for an empty bin
    observed: float | None  # fraction of positives among the bin's images; None when empty


@dataclass(frozen=True)
class Calibration:
    """One finding's reliability diagram and its expected calibration error (ECE).

    ECE = sum over bins of (n_b / N) * |observed_b - mean_predicted_b| (Naeini et al., 2015,
    equal-width bins): 0 means the predicted probabilities match the observed frequencies.
    """

    bins: tuple[CalibrationBin, ...]
    ece: float
    n_images: int
    n_pos: int


def reliability_bins(
    y_true_col: np.ndarray, prob_col: np.ndarray, *, n_bins: int = DEFAULT_BINS
) -> Calibration:
    """Equal-width bins over [0, 1]: per bin the count, mean probability and observed rate."""
    y = np.asarray(y_true_col).reshape(-1)
    p = np.asarray(prob_col, dtype=np.float64).reshape(-1)
    if y.shape != p.shape or y.size == 0:
        raise EvaluationError("labels and probabilities must be non-empty and the same length")
    if n_bins < 1:
        raise EvaluationError(f"n_bins must be at least 1, got {n_bins}")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise EvaluationError("probabilities must be finite and within [0, 1]")
    if not np.isin(y, (0, 1)).all():
        raise EvaluationError("labels must be 0 or 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds edges[b] <= p < edges[b + 1]; p = 1 goes into the last bin
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    sum_p = np.bincount(index, weights=p, minlength=n_bins)
    sum_y = np.bincount(index, weights=y.astype(np.float64), minlength=n_bins)
    bins, ece = [], 0.0
    for b in range(n_bins):
        n = int(counts[b])
        mean_p = float(sum_p[b] / n) if n else None
        observed = float(sum_y[b] / n) if n else None
        if n:
            ece += n / y.size * abs(observed - mean_p)
        bins.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), n, mean_p, observed))
    return Calibration(bins=tuple(bins), ece=float(ece), n_images=int(y.size), n_pos=int(y.sum()))


def calibration_per_finding(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    n_bins: int = DEFAULT_BINS,
    findings: Sequence[str] = FINDINGS,
) -> dict[str, Calibration | None]:
    """Reliability bins per finding; None where the test set has no positive image of it
    (a diagram of all-negative images says nothing about how the model ranks cases)."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != probs.shape or y_true.shape[1] != len(findings):
        raise EvaluationError(
            f"labels {y_true.shape} and probabilities {probs.shape} must both be "
            f"[images, {len(findings)}]"
        )
    return {
        name: reliability_bins(y_true[:, k], probs[:, k], n_bins=n_bins)
        if y_true[:, k].any()
        else None
        for k, name in enumerate(findings)
    }
