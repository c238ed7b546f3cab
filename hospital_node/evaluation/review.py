"""A full review of one model on one test set: AUC with CIs, ROC, calibration, subgroups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hospital_node.evaluation.calibration import DEFAULT_BINS, Calibration, calibration_per_finding
from hospital_node.evaluation.metrics import evaluate_scores, roc_curves
from hospital_node.evaluation.records import Evaluation, RocCurve
from hospital_node.evaluation.subgroups import SubgroupResult, subgroup_evaluations


@dataclass(frozen=True)
class Review:
    """Everything the per-site review page shows about one evaluation.

    `rocs` and `calibration` are None where the finding is not available (no positive, or no
    negative, test image); `subgroups` is empty when no subgroup attribute is known.
    """

    evaluation: Evaluation
    rocs: Mapping[str, RocCurve | None]
    calibration: Mapping[str, Calibration | None]
    subgroups: tuple[SubgroupResult, ...]


def review_scores(
    y_true: np.ndarray,
    probs: np.ndarray,
    patient_ids: Sequence[str],
    *,
    groups: Mapping[str, Sequence[str]] | None,
    rng: np.random.Generator,
    n_boot: int,
    n_bins: int = DEFAULT_BINS,
) -> Review:
    """The review of scores `probs` [images, findings] against labels `y_true`.

    CIs: percentile bootstrap over patients with `n_boot` resamples (0: no CIs), for the
    findings and for every subgroup; all draws come from `rng`.
    """
    with_ci = n_boot > 0
    evaluation = evaluate_scores(
        y_true, probs, patient_ids, with_ci=with_ci, rng=rng, n_boot=max(n_boot, 1)
    )
    subgroups = subgroup_evaluations(
        y_true, probs, patient_ids, groups or {}, with_ci=with_ci, rng=rng, n_boot=max(n_boot, 1)
    )
    return Review(
        evaluation=evaluation,
        rocs=roc_curves(y_true, probs),
        calibration=calibration_per_finding(y_true, probs, n_bins=n_bins),
        subgroups=tuple(subgroups),
    )
