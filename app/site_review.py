"""Tables of the per-site drill-down: AUC trend, reliability diagram, subgroups (pure pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.review import format_auc, format_ci, is_missing
from hospital_node.evaluation.calibration import Calibration
from hospital_node.evaluation.subgroups import GROUP_ORDER

MAX_TREND_STEPS = 200  # a node evaluating for weeks: plot at most this many evaluations
ATTRIBUTE_LABELS = {"sex": "Sex", "age_band": "Age band (years)", "view_position": "View"}
GROUP_LABELS = {
    "F": "female",
    "M": "male",
    "other": "other",
    "unknown": "not recorded",
    "PA": "PA (posterior-anterior, standing)",
    "AP": "AP (anterior-posterior, often bedside)",
}
TEST_SET_LABELS = {
    "common": "the common held-out test set (the same images for every hospital)",
    "local": "this hospital's own held-out test patients (its local test split)",
}


def trend_frame(history: pd.DataFrame, *, max_steps: int = MAX_TREND_STEPS) -> pd.DataFrame:
    """AUC per finding against steps; at most `max_steps` evenly spread evaluations, the first
    and the newest always kept. Unavailable AUCs are left out."""
    frame = history[history["auc"].notna()]
    steps = np.sort(frame["step"].unique())
    if steps.size > max_steps:
        keep = steps[np.unique(np.linspace(0, steps.size - 1, max_steps).round().astype(int))]
        frame = frame[frame["step"].isin(keep)]
    columns = ["step", "finding", "auc", "ci_low", "ci_high", "n_pos"]
    return frame[columns].reset_index(drop=True)


def calibration_frame(curve: Calibration) -> pd.DataFrame:
    """The non-empty bins of a reliability diagram: predicted vs observed, with counts."""
    rows = [
        {
            "bin": f"{b.lower:.1f}–{b.upper:.1f}",
            "mean_predicted": b.mean_predicted,
            "observed": b.observed,
            "count": b.count,
        }
        for b in curve.bins
        if b.count
    ]
    return pd.DataFrame(rows, columns=["bin", "mean_predicted", "observed", "count"])


def format_ece(value: float | None) -> str:
    """'0.042'; '—' when no diagram exists."""
    return "—" if value is None or is_missing(value) else f"{value:.3f}"


def _group_rank(attribute: str, group: str) -> int:
    order = GROUP_ORDER.get(attribute, ())
    return order.index(group) if group in order else len(order)


def _subgroup_row(row: pd.Series, min_positives: int) -> dict[str, object]:
    n_pos, n_neg = int(row["n_pos"]), int(row["n_neg"])
    small = min(n_pos, n_neg) < min_positives
    if small:
        auc_text, ci_text = "suppressed", f"fewer than {min_positives} positive or negative images"
    else:
        auc_text = format_auc(row["auc"], n_pos, min_positives)
        ci_text = format_ci(row["ci_low"], row["ci_high"], n_pos, min_positives)
    return {
        "Attribute": ATTRIBUTE_LABELS.get(row["attribute"], row["attribute"]),
        "Group": GROUP_LABELS.get(row["subgroup"], row["subgroup"]),
        "Images": int(row["n_images"]),
        "Patients": int(row["n_patients"]),
        "Positives": f"< {min_positives}" if n_pos < min_positives else str(n_pos),
        "AUC": auc_text,
        "95% CI": ci_text,
    }


def subgroup_table(frame: pd.DataFrame, finding: str, *, min_positives: int) -> pd.DataFrame:
    """One row per (attribute, group) for `finding`: counts, AUC and CI; an AUC over fewer than
    `min_positives` positive (or negative) images is suppressed, and so is a small count."""
    rows = frame[frame["finding"] == finding].copy()
    if rows.empty:
        return pd.DataFrame()
    attributes = list(ATTRIBUTE_LABELS)
    rows["_a"] = rows["attribute"].map(lambda a: attributes.index(a) if a in attributes else 9)
    rows["_g"] = [
        _group_rank(a, g) for a, g in zip(rows["attribute"], rows["subgroup"], strict=True)
    ]
    rows = rows.sort_values(["_a", "_g", "subgroup"])
    return pd.DataFrame([_subgroup_row(r, min_positives) for _, r in rows.iterrows()])


def review_status(results: pd.DataFrame) -> tuple[int, int, bool]:
    """(step shown, newest evaluated step, with CIs?) of the rows of one (method, site)."""
    step = int(results["step"].max())
    newest = int(results["newest_step"].max()) if "newest_step" in results else step
    has_ci = bool(results["has_ci"].all()) if "has_ci" in results else False
    return step, newest, has_ci
