"""AUC per finding within subgroups of the test images (sex, age band, view position)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hospital_node.evaluation.metrics import evaluate_scores
from hospital_node.evaluation.records import Evaluation, EvaluationError

ATTRIBUTES = ("sex", "age_band", "view_position")
UNKNOWN = "unknown"
# Age bands in years, lower bound inclusive; the last band is open-ended.
AGE_BANDS = ((0, "0-17"), (18, "18-39"), (40, "40-59"), (60, "60-79"), (80, "80+"))
GROUP_ORDER = {
    "sex": ("F", "M", "other", UNKNOWN),
    "age_band": (*(label for _, label in AGE_BANDS), UNKNOWN),
    "view_position": ("PA", "AP", "other", UNKNOWN),
}


def age_band(years: float | None) -> str:
    """'0-17', '18-39', '40-59', '60-79', '80+', or 'unknown' (no or implausible age)."""
    if years is None or not np.isfinite(years) or years < 0 or years > 130:
        return UNKNOWN
    label = AGE_BANDS[0][1]
    for lower, name in AGE_BANDS:
        if years >= lower:
            label = name
    return label


@dataclass(frozen=True)
class SubgroupResult:
    """One subgroup's evaluation (counts, AUC per finding, CIs when computed)."""

    attribute: str  # one of ATTRIBUTES
    group: str  # e.g. 'F', '60-79', 'PA'
    evaluation: Evaluation


def _order(attribute: str, groups: set[str]) -> list[str]:
    known = GROUP_ORDER.get(attribute, ())
    rank = {g: i for i, g in enumerate(known)}
    return sorted(groups, key=lambda g: (rank.get(g, len(rank)), g))


def subgroup_evaluations(
    y_true: np.ndarray,
    probs: np.ndarray,
    patient_ids: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    *,
    with_ci: bool,
    rng: np.random.Generator | None = None,
    n_boot: int = 200,
) -> list[SubgroupResult]:
    """`evaluate_scores` on the images of every subgroup of every attribute.

    `groups` maps an attribute to one group label per image (see `age_band` and the
    data loader's attributes). Counts always come back; an AUC only where the subgroup has
    both classes. Small subgroups are kept here: suppression is the display's and the
    network share's decision (they know their thresholds).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    ids = np.asarray(patient_ids)
    results = []
    for attribute, labels in groups.items():
        labels = np.asarray(labels)
        if labels.shape != (y_true.shape[0],):
            raise EvaluationError(f"{attribute}: need one group label per image")
        for group in _order(attribute, set(labels.tolist())):
            keep = labels == group
            evaluation = evaluate_scores(
                y_true[keep], probs[keep], ids[keep], with_ci=with_ci, rng=rng, n_boot=n_boot
            )
            results.append(SubgroupResult(attribute, str(group), evaluation))
    return results
