"""Per-site AUC review tables: pure pandas, no Streamlit (the pages render what this builds)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pandas as pd

from data_tools.labels import FINDINGS
from hospital_node.evaluation.records import RocCurve
from hospital_node.store.schema import ALL_SITES, METHODS

COMPARISONS = {
    "none": "AUC",
    "centralized": "Difference: method minus centralized",
    "local": "Difference: method minus local-only",
}
METHOD_LABELS = {
    "centralized": "Centralized (all data pooled; reference)",
    "local": "Local only (no exchange)",
    "gossip": "Gossip SGD",
    "ecl-pdmm": "ECL-PDMM (edge consensus)",
    "ecl-admm": "ECL-ADMM (edge consensus)",
    "fedavg": "FedAvg",
}
_PREFERRED = ("ecl-pdmm", "ecl-admm", "gossip", "fedavg", "local", "centralized")


def site_order(sites: Iterable[str]) -> list[str]:
    """Sites in natural order (N2 before N10), the pooled 'all' last."""
    return sorted(set(sites), key=lambda s: (s == ALL_SITES, len(s), s))


def method_order(methods: Iterable[str]) -> list[str]:
    """Methods in the store's canonical order, unknown names last."""
    known = {m: i for i, m in enumerate(METHODS)}
    return sorted(set(methods), key=lambda m: (known.get(m, len(known)), m))


def default_method(methods: Iterable[str]) -> str | None:
    """The method a clinician most likely wants first: a consensus method when there is one."""
    present = set(methods)
    return next((m for m in _PREFERRED if m in present), next(iter(sorted(present)), None))


def is_missing(value: float | None) -> bool:
    """True for None and NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_reliable(n_pos: int, min_positives: int) -> bool:
    """Enough positive test images for the AUC to be read as a number."""
    return int(n_pos) >= min_positives


def format_auc(auc: float | None, n_pos: int, min_positives: int, decimals: int = 3) -> str:
    """'0.834'; '≈0.8' when unreliable (too few positives); 'n/a' when not available."""
    if is_missing(auc):
        return "n/a"
    if not is_reliable(n_pos, min_positives):
        return f"≈{auc:.1f}"
    return f"{auc:.{decimals}f}"


def format_ci(low: float | None, high: float | None, n_pos: int, min_positives: int) -> str:
    """'0.781–0.880'; 'unreliable' or 'not computed' when there is no precise interval."""
    if not is_reliable(n_pos, min_positives):
        return "unreliable"
    if is_missing(low) or is_missing(high):
        return "not computed"
    return f"{low:.3f}–{high:.3f}"


def format_difference(diff: float | None, reliable: bool) -> str:
    """'+0.05' / '-0.12'; one decimal with '≈' when either AUC is unreliable."""
    if is_missing(diff):
        return "n/a"
    return f"{diff:+.2f}" if reliable else f"≈{diff:+.1f}"


def training_positives(sites: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Positives per finding in each site's training split; 'all' is the sum over hospitals."""
    hospitals = sites[sites["role"] == "hospital"]
    counts = {
        str(row["site"]): {f: int(row[f]) for f in FINDINGS} for _, row in hospitals.iterrows()
    }
    counts[ALL_SITES] = {f: int(hospitals[f].sum()) for f in FINDINGS}
    return counts


def _reference(final: pd.DataFrame, compare: str, test_set: str) -> pd.DataFrame:
    """(site, finding, reference AUC, reference n_pos) of the comparison method."""
    ref = final[final["method"] == compare][["site", "finding", "auc", "n_pos"]]
    ref = ref.rename(columns={"auc": "reference", "n_pos": "reference_n_pos"})
    if compare == "centralized" and test_set == "common":
        # One pooled model scored on the common test set: the same reference for every site.
        return ref[ref["site"] == ALL_SITES].drop(columns="site")
    return ref


def _cell_texts(row: pd.Series, compare: str, min_positives: int) -> tuple[str, str]:
    """(cell label, note for the tooltip) of one heat-map cell."""
    notes = []
    if is_missing(row["auc"]):
        notes.append("not available: no positive (or no negative) image in this test set")
    elif not row["reliable"]:
        notes.append(f"unreliable: only {int(row['n_pos'])} positive test images")
    if row["never_seen"]:
        notes.append("never seen at this site (no positive training image)")
    if compare == "none":
        label = format_auc(row["auc"], row["n_pos"], min_positives, decimals=2)
    else:
        label = format_difference(row["value"], bool(row["reliable"] and row["reference_ok"]))
    return label, "; ".join(notes) or "—"


def heatmap_frame(
    final: pd.DataFrame,
    sites: pd.DataFrame,
    *,
    method: str,
    compare: str,
    test_set: str,
    min_positives: int,
) -> pd.DataFrame:
    """One row per (site, finding) of `method`: AUC, CI, counts, flags, colour value, labels."""
    rows = final[final["method"] == method].copy()
    counts = training_positives(sites)
    rows["train_positives"] = [
        counts.get(s, {}).get(f, 0) for s, f in zip(rows["site"], rows["finding"], strict=True)
    ]
    rows["never_seen"] = rows["train_positives"] == 0
    rows["reliable"] = [is_reliable(n, min_positives) for n in rows["n_pos"]]
    if compare == "none":
        rows["reference"] = math.nan
        rows["reference_ok"] = True
        rows["value"] = rows["auc"]
    else:
        ref = _reference(final, compare, test_set)
        keys = ["finding"] if "site" not in ref.columns else ["site", "finding"]
        rows = rows.merge(ref, on=keys, how="left")
        rows["reference_ok"] = rows["reference_n_pos"].fillna(0) >= min_positives
        rows["value"] = rows["auc"] - rows["reference"]
    texts = [_cell_texts(row, compare, min_positives) for _, row in rows.iterrows()]
    rows["label"] = [t[0] for t in texts]
    rows["note"] = [t[1] for t in texts]
    rows["auc_text"] = [
        format_auc(a, n, min_positives) for a, n in zip(rows["auc"], rows["n_pos"], strict=True)
    ]
    rows["ci_text"] = [
        format_ci(lo, hi, n, min_positives)
        for lo, hi, n in zip(rows["ci_low"], rows["ci_high"], rows["n_pos"], strict=True)
    ]
    rows["reference_text"] = ["—" if is_missing(r) else f"{r:.3f}" for r in rows["reference"]]
    order = {s: i for i, s in enumerate(site_order(rows["site"]))}
    rows["_site"] = rows["site"].map(order)
    return rows.sort_values(["_site"], kind="stable").drop(columns="_site").reset_index(drop=True)


def site_summary(final: pd.DataFrame, methods: Iterable[str]) -> pd.DataFrame:
    """Mean AUC over available findings per site (rows) and method (columns)."""
    subset = final[final["method"].isin(list(methods))]
    table = subset.groupby(["site", "method"])["auc"].mean().unstack("method")
    table = table.reindex(index=site_order(table.index), columns=method_order(table.columns))
    return table


def site_detail(
    rows: pd.DataFrame,
    rocs: Mapping[str, RocCurve],
    *,
    min_positives: int,
) -> pd.DataFrame:
    """The drill-down table of one site (rows of heatmap_frame for that site), finding order."""
    table = []
    for _, row in rows.iterrows():
        total = int(row["n_pos"]) + int(row["n_neg"])
        curve = rocs.get(row["finding"])
        reliable = bool(row["reliable"]) and curve is not None
        table.append(
            {
                "Finding": row["finding"],
                "AUC": row["auc_text"],
                "95% CI": row["ci_text"],
                "Positives (test)": int(row["n_pos"]),
                "Negatives (test)": int(row["n_neg"]),
                "Prevalence": f"{100 * row['n_pos'] / total:.1f} %" if total else "n/a",
                "Sensitivity": f"{curve.sensitivity:.2f}" if reliable else "—",
                "Specificity": f"{curve.specificity:.2f}" if reliable else "—",
                "Training positives": int(row["train_positives"]),
                "Note": row["note"],
            }
        )
    frame = pd.DataFrame(table)
    if frame.empty:
        return frame
    order = {f: i for i, f in enumerate(FINDINGS)}
    return frame.sort_values("Finding", key=lambda s: s.map(order)).reset_index(drop=True)
