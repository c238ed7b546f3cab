"""Network-wide metrics on a node's store: the summaries sharing hospitals published (pure)."""

from __future__ import annotations

import pandas as pd

from app.review import format_auc, format_ci, is_missing, site_order

SUPPRESSED_NOTE = (
    "suppressed by that hospital: fewer than {k} positive (or negative) test images, so it "
    "sends no AUC"
)


def _cell(row: pd.Series, min_positives: int) -> dict[str, object]:
    """Heat-map fields of one shared (origin, finding) row; compatible with heatmap_chart."""
    origin_k = int(row["min_positives"])
    if bool(row["suppressed"]):
        return {"label": "—", "auc_text": "suppressed", "ci_text": "—", "value": float("nan"),
                "reliable": False, "note": SUPPRESSED_NOTE.format(k=origin_k)}  # fmt: skip
    n_pos = int(row["n_pos"])
    reliable = n_pos >= min_positives
    note = "—" if reliable else f"unreliable: only {n_pos} positive test images"
    return {
        "label": format_auc(row["auc"], n_pos, min_positives, decimals=2),
        "auc_text": format_auc(row["auc"], n_pos, min_positives),
        "ci_text": format_ci(row["ci_low"], row["ci_high"], n_pos, min_positives),
        "value": row["auc"],
        "reliable": reliable,
        "note": note,
    }


def shared_heatmap_frame(shared: pd.DataFrame, *, min_positives: int) -> pd.DataFrame:
    """One row per (hospital, finding) of the shared summaries, in the heat map's columns.

    Each hospital's AUC is measured on its own test patients: the rows show how the model
    does at each site, they are not a comparison on one test set.
    """
    if shared.empty:
        return pd.DataFrame()
    cells = [_cell(row, min_positives) for _, row in shared.iterrows()]
    frame = pd.concat([shared.reset_index(drop=True), pd.DataFrame(cells)], axis=1)
    frame = frame.rename(columns={"origin": "site"})
    frame["n_pos"] = frame["n_pos"].fillna(0).astype(int)
    frame["n_neg"] = frame["n_neg"].fillna(0).astype(int)
    frame["never_seen"] = False
    frame["train_positives"] = None
    frame["reference_text"] = "—"
    order = {s: i for i, s in enumerate(site_order(frame["site"]))}
    return frame.sort_values("site", key=lambda s: s.map(order), kind="stable").reset_index(
        drop=True
    )


def _when(timestamp: str) -> str:
    return str(timestamp)[:19].replace("T", " ") if timestamp else "—"


def shared_sources(shared: pd.DataFrame, own: str) -> pd.DataFrame:
    """One row per hospital: who evaluated, at which step and boot, when, and how it got here."""
    if shared.empty:
        return pd.DataFrame()
    first = shared.groupby("origin", as_index=False).first()
    first = first.set_index("origin").loc[site_order(first["origin"])].reset_index()
    available = shared.groupby("origin")["suppressed"].apply(lambda s: int((~s.astype(bool)).sum()))
    return pd.DataFrame(
        {
            "Hospital": first["origin"],
            "Method": first["method"],
            "Model step": first["step"].astype(int),
            "Boot epoch": first["boot_epoch"].astype(int),
            "Test images": first["n_images"].astype(int),
            "Findings shown": [
                f"{available[o]} of {len(shared[shared['origin'] == o])}" for o in first["origin"]
            ],  # fmt: skip
            "Evaluated at (UTC)": first["created_at"].map(_when),
            "Received (UTC)": first["received_at"].map(_when),
            "Sent by": ["this hospital" if v == own else v for v in first["via"]],
        }
    )


def mean_shared_auc(frame: pd.DataFrame) -> dict[str, float | None]:
    """Mean AUC over the findings a hospital did not suppress."""
    means: dict[str, float | None] = {}
    for site, rows in frame.groupby("site"):
        values = [v for v in rows["auc"] if not is_missing(v)]
        means[str(site)] = sum(values) / len(values) if values else None
    return means
