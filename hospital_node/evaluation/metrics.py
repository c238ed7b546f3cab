"""Per-finding evaluation: AUC, patient-cluster bootstrap CIs, ROC curves, consensus residual."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from data_tools.labels import FINDINGS
from hospital_node.evaluation.records import Evaluation, EvaluationError, RocCurve

logger = logging.getLogger(__name__)

# Work on at most this many (resample x image) weights at once, so memory stays ~100 MB.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


def _check_scores(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate [N, K] labels and scores; returns them as (int8, float64) arrays."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape:
        raise EvaluationError(
            f"y_true {y_true.shape} and y_score {y_score.shape} must both be [images, findings]"
        )
    if not np.isin(y_true, (0, 1)).all():
        raise EvaluationError("y_true must hold only 0 and 1 (one column per finding)")
    if not np.isfinite(y_score).all():
        raise EvaluationError("y_score holds NaN or inf; check the model output before evaluating")
    return y_true.astype(np.int8), y_score


def _check_patient_ids(patient_ids: Sequence[str] | np.ndarray, n_images: int) -> np.ndarray:
    """One patient id per image, as an array."""
    ids = np.asarray(patient_ids)
    if ids.shape != (n_images,):
        raise EvaluationError(f"patient_ids has shape {ids.shape}; need one id per image")
    return ids


def per_finding_auc(y_true: np.ndarray, y_score: np.ndarray) -> list[float | None]:
    """ROC AUC per column (scikit-learn); None where the column lacks positives or negatives."""
    y_true, y_score = _check_scores(y_true, y_score)
    return [
        float(roc_auc_score(y_true[:, k], y_score[:, k]))
        if _has_both_classes(y_true[:, k])
        else None
        for k in range(y_true.shape[1])
    ]


def macro_mean(aucs: Sequence[float | None]) -> float | None:
    """Unweighted mean over available findings; None when none is available."""
    available = [a for a in aucs if a is not None and np.isfinite(a)]
    return float(np.mean(available)) if available else None


def weighted_rank_auc(
    y_col: np.ndarray, score_col: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUC of one finding under many integer weightings of the images at once.

    `weights` is [B, N]: row b says how often each image appears in resample b, so the
    result equals the AUC of the resampled data set (ties count one half, as in sklearn).
    Scores are sorted once; per tie group g, AUC = sum_g pos_g * (neg_below_g + neg_g / 2)
    / (n_pos * n_neg). Returns (auc [B], valid [B]); auc is NaN where not valid.
    """
    order = np.argsort(score_col, kind="stable")
    sorted_scores = score_col[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = w * y_col[order]
    pos_g = np.add.reduceat(pos, starts, axis=1)
    neg_g = np.add.reduceat(w, starts, axis=1) - pos_g
    neg_below = np.cumsum(neg_g, axis=1) - neg_g
    n_pos = pos_g.sum(axis=1)
    n_neg = neg_g.sum(axis=1)
    valid = (n_pos > 0) & (n_neg > 0)
    numerator = (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(valid, numerator / (n_pos * n_neg), np.nan)
    return auc, valid


def _patient_weights(
    inverse: np.ndarray, n_patients: int, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """[n_resamples, N] image weights: each resample draws n_patients patients with replacement."""
    draws = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    flat = draws + (np.arange(n_resamples)[:, None] * n_patients)
    counts = np.bincount(flat.ravel(), minlength=n_resamples * n_patients)
    return counts.reshape(n_resamples, n_patients)[:, inverse].astype(np.float64)


def bootstrap_auc_ci(
    y_true: np.ndarray,
    y_score: np.ndarray,
    patient_ids: Sequence[str] | np.ndarray,
    *,
    rng: np.random.Generator,
    n_boot: int = 200,
    level: float = 0.95,
    min_valid_fraction: float = 0.5,
) -> list[tuple[float, float] | None]:
    """Percentile bootstrap CIs of each finding's AUC, resampling patients (cluster bootstrap).

    All images of a drawn patient enter the resample together, so a patient with many
    images does not count as many independent observations. Every resample is shared by
    all findings. A resample without positives (or negatives) for a finding is skipped
    for that finding; with fewer than `min_valid_fraction * n_boot` usable resamples the
    CI is None (too few cases to say anything).
    """
    y_true, y_score = _check_scores(y_true, y_score)
    ids = _check_patient_ids(patient_ids, y_true.shape[0])
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise EvaluationError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    _, inverse = np.unique(ids, return_inverse=True)
    n_patients = int(inverse.max()) + 1 if inverse.size else 0
    n_findings = y_true.shape[1]
    available = [k for k in range(n_findings) if _has_both_classes(y_true[:, k])]
    boot = np.full((n_boot, n_findings), np.nan)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // max(1, y_true.shape[0]))
    for start in range(0, n_boot, chunk) if available else ():
        stop = min(n_boot, start + chunk)
        weights = _patient_weights(inverse, n_patients, stop - start, rng)
        for k in available:
            boot[start:stop, k], _ = weighted_rank_auc(y_true[:, k], y_score[:, k], weights)
    return _percentile_intervals(boot, level, min_valid_fraction)


def _percentile_intervals(
    boot: np.ndarray, level: float, min_valid_fraction: float
) -> list[tuple[float, float] | None]:
    """Per column of bootstrap AUCs (NaN = skipped resample): the percentile interval or None."""
    alpha = 1.0 - level
    cis: list[tuple[float, float] | None] = []
    for k in range(boot.shape[1]):
        values = boot[:, k][np.isfinite(boot[:, k])]
        if values.size < max(2, min_valid_fraction * boot.shape[0]):
            cis.append(None)
            continue
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        cis.append((float(low), float(high)))
    return cis


def evaluate_scores(
    y_true: np.ndarray,
    y_score: np.ndarray,
    patient_ids: Sequence[str] | np.ndarray,
    *,
    with_ci: bool,
    rng: np.random.Generator | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    findings: tuple[str, ...] = FINDINGS,
) -> Evaluation:
    """Everything the results store keeps about one model on one test set."""
    y_true, y_score = _check_scores(y_true, y_score)
    if y_true.shape[1] != len(findings):
        raise EvaluationError(f"{y_true.shape[1]} score columns but {len(findings)} findings")
    aucs = per_finding_auc(y_true, y_score)
    ci = None
    if with_ci:
        if rng is None:
            raise EvaluationError("with_ci=True needs a seeded rng (np.random.default_rng(seed))")
        ci = tuple(
            bootstrap_auc_ci(y_true, y_score, patient_ids, rng=rng, n_boot=n_boot, level=level)
        )
    n_pos = tuple(int(v) for v in y_true.sum(axis=0))
    return Evaluation(
        auc=tuple(aucs),
        ci=ci,
        n_pos=n_pos,
        n_neg=tuple(y_true.shape[0] - p for p in n_pos),
        mean_auc=macro_mean(aucs),
        n_images=int(y_true.shape[0]),
        n_patients=len(np.unique(_check_patient_ids(patient_ids, y_true.shape[0]))),
        ci_level=level if with_ci else None,
        findings=findings,
    )


def _downsample_indices(fpr: np.ndarray, tpr: np.ndarray, max_points: int, keep: int) -> np.ndarray:
    """Indices spread evenly along the curve (fpr + tpr grows 0 -> 2), ends and `keep` included."""
    if fpr.size <= max_points:
        return np.arange(fpr.size)
    path = fpr + tpr
    targets = np.linspace(path[0], path[-1], max_points - 1)
    picked = np.searchsorted(path, targets, side="left").clip(0, fpr.size - 1)
    return np.unique(np.r_[picked, 0, fpr.size - 1, keep])


def operating_point(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray
) -> tuple[float, float, float]:
    """(threshold, sensitivity, specificity) maximising Youden's J = sensitivity + specificity - 1.

    J = tpr - fpr weighs a missed finding and a false alarm equally; it is a neutral default
    for review, not a clinical decision threshold. Ties go to the highest threshold (the
    first in scikit-learn's order), i.e. the more specific point.
    """
    fpr, tpr, thresholds = (np.asarray(a, dtype=np.float64) for a in (fpr, tpr, thresholds))
    if fpr.size == 0 or not fpr.shape == tpr.shape == thresholds.shape:
        raise EvaluationError("fpr, tpr and thresholds must be non-empty and the same length")
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]), float(tpr[best]), float(1.0 - fpr[best])


def _full_and_kept_roc(
    y_true_col: np.ndarray, y_score_col: np.ndarray, max_points: int
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(full curve, downsampled curve) as (fpr, tpr, thresholds) triples."""
    y, s = _check_scores(np.reshape(y_true_col, (-1, 1)), np.reshape(y_score_col, (-1, 1)))
    if not _has_both_classes(y[:, 0]):
        raise EvaluationError("no ROC curve: the test set needs positive and negative images")
    if max_points < 3:
        raise EvaluationError(f"max_points must be at least 3, got {max_points}")
    full = roc_curve(y[:, 0], s[:, 0], drop_intermediate=True)
    keep = int(np.argmax(full[1] - full[0]))
    idx = _downsample_indices(full[0], full[1], max_points, keep)
    return full, tuple(a[idx] for a in full)


def _has_both_classes(y_col: np.ndarray) -> bool:
    """True when a label column has at least one positive and one negative."""
    n_pos = int(np.sum(y_col))
    return 0 < n_pos < y_col.shape[0]


def roc_curve_summary(
    y_true_col: np.ndarray, y_score_col: np.ndarray, max_points: int = 101
) -> RocCurve | None:
    """Stored form of one finding's ROC curve with its Youden point; None if not available."""
    if not _has_both_classes(np.reshape(y_true_col, -1)):
        return None
    full, kept = _full_and_kept_roc(y_true_col, y_score_col, max_points)
    threshold, sensitivity, specificity = operating_point(*full)
    return RocCurve(
        fpr=tuple(float(v) for v in kept[0]),
        tpr=tuple(float(v) for v in kept[1]),
        thresholds=tuple(float(v) for v in kept[2]),
        threshold=threshold,
        sensitivity=sensitivity,
        specificity=specificity,
    )


def roc_curves(
    y_true: np.ndarray, y_score: np.ndarray, *, findings: tuple[str, ...] = FINDINGS
) -> dict[str, RocCurve | None]:
    """ROC curve per finding (None where not available), keyed by finding name."""
    y_true, y_score = _check_scores(y_true, y_score)
    return {name: roc_curve_summary(y_true[:, k], y_score[:, k]) for k, name in enumerate(findings)}


def consensus_residual(models: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Largest L2 distance between any two node models, all tensors flattened together.

    Accumulates squared pairwise differences tensor by tensor in float64 (no model-sized
    concatenation, and no |a|^2 + |b|^2 - 2ab cancellation when models are nearly equal).
    """
    if len(models) < 2:
        return 0.0
    names = sorted(models[0])
    squared = torch.zeros(len(models), len(models), dtype=torch.float64)
    for name in names:
        try:
            stacked = torch.stack([m[name].detach().reshape(-1).to(torch.float64) for m in models])
        except (KeyError, RuntimeError) as exc:
            raise EvaluationError(f"models disagree on tensor {name!r}: {exc}") from exc
        diff = torch.cdist(
            stacked[None], stacked[None], compute_mode="donot_use_mm_for_euclid_dist"
        )
        squared += diff[0] ** 2
    if any(set(m) != set(names) for m in models[1:]):
        raise EvaluationError("models have different tensor names; compare like with like")
    return float(squared.max().sqrt())
