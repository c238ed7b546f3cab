"""Per-site AUC review: sites x findings heat map, comparison with references, site drill-down."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data
from app.review import (
    COMPARISONS,
    METHOD_LABELS,
    default_method,
    format_auc,
    format_ci,
    heatmap_frame,
    method_order,
    site_detail,
    site_order,
    site_summary,
)
from app.settings import AppContext
from app.shell import run_page
from data_tools.labels import FINDINGS

TEST_SET_HELP = (
    "Common: every hospital's model is scored on the same held-out images, so sites compare "
    "directly. Local: each model is scored on its own hospital's test images (its patients)."
)


def _results(context: AppContext, test_set: str) -> tuple[pd.DataFrame, bool]:
    """(rows, final?): the final evaluation, or the newest interim one while a run trains."""
    final = data.load_final_auc(context.store_path, context.run_id, test_set, context.version)
    if not final.empty:
        return final, True
    latest = data.load_latest_auc(context.store_path, context.run_id, test_set, context.version)
    return latest, False


def _controls(methods: list[str]) -> tuple[str, str, str]:
    """(method, test set, comparison) chosen by the user."""
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    method = left.selectbox(
        "Method",
        methods,
        index=methods.index(default_method(methods)),
        format_func=lambda m: METHOD_LABELS.get(m, m),
        key="auc_method",
    )
    local = right.toggle("Local test set", key="auc_local", help=TEST_SET_HELP)
    options = [c for c in COMPARISONS if c == "none" or (c in methods and c != method)]
    compare = st.radio(
        "Show",
        options,
        format_func=COMPARISONS.get,
        key="auc_compare",
        horizontal=True,
        help="The difference view subtracts the reference's AUC for the same finding "
        "(and the same site on the local test set): blue = better than the reference.",
    )
    return method, ("local" if local else "common"), compare


def _legend(min_positives: int) -> None:
    st.caption(
        f"**•** never seen at this site (no positive image of that finding in its training "
        f"data) · faded cell with **≈** = unreliable (fewer than {min_positives} positive test "
        "images; only one decimal shown) · **n/a** = not available (no positive test image). "
        "Hover a cell for AUC, 95% CI and counts."
    )


def _means(results: pd.DataFrame, method: str) -> None:
    refs = [m for m in ("centralized", "local") if m in set(results["method"]) and m != method]
    table = site_summary(results, [method, *refs])
    table.columns = [METHOD_LABELS.get(c, c).split(" (")[0] for c in table.columns]
    with st.expander("Mean AUC per site (over the findings available)"):
        st.dataframe(table.style.format("{:.3f}", na_rep="n/a"), width="stretch")


def _finding_metrics(row: pd.Series, min_positives: int) -> None:
    total = int(row["n_pos"]) + int(row["n_neg"])
    prevalence = 100 * row["n_pos"] / total if total else float("nan")
    cols = st.columns([2, 3, 2])
    cols[0].metric(
        "AUC",
        format_auc(row["auc"], row["n_pos"], min_positives),
        help="Area under the ROC curve: 0.5 = chance, 1.0 = perfect.",
    )
    cols[1].metric("95% CI", format_ci(row["ci_low"], row["ci_high"], row["n_pos"], min_positives))
    cols[2].metric(
        "Positives in test set",
        f"{int(row['n_pos'])} of {total}",
        help=f"Prevalence {prevalence:.1f} % of the test images.",
    )
    if row["note"] != "—":
        st.warning(row["note"][0].upper() + row["note"][1:])


def _drill_down(context: AppContext, frame: pd.DataFrame, method: str, test_set: str) -> None:
    st.subheader("One site in detail")
    sites = site_order(frame["site"])
    left, right = st.columns(2)
    site = left.selectbox("Site", sites, key="auc_site")
    rows = (
        frame[frame["site"] == site].set_index("finding").reindex(FINDINGS).dropna(subset=["n_pos"])
    )
    findings = list(rows.index)
    finding = right.selectbox("Finding", findings, key="auc_finding")
    rocs = data.load_rocs(
        context.store_path, context.run_id, method, site, test_set, context.version
    )
    row = rows.loc[finding]
    _finding_metrics(row, context.settings.min_positives)
    curve = rocs.get(finding)
    if curve is None:
        st.info(f"No ROC curve for {finding} at {site}: the test set has no positive image.")
    else:
        title = f"{finding} at {site}: AUC {row['auc_text']}"
        st.altair_chart(charts.roc_chart(curve, title=title), width="stretch")
        st.caption(
            f"Red dot: the operating point that maximises sensitivity + specificity "
            f"(sensitivity {curve.sensitivity:.2f}, specificity {curve.specificity:.2f}); a "
            "neutral review aid, not a clinical cut-off."
        )
    detail = site_detail(rows.reset_index(), rocs, min_positives=context.settings.min_positives)
    st.dataframe(detail, hide_index=True, width="stretch", height="content")
    if rocs:
        with st.expander("All ROC curves of this site"):
            st.altair_chart(charts.roc_grid(rocs), width="content")


def render(context: AppContext) -> None:
    """The per-site AUC review page."""
    st.title("Per-site AUC review")
    st.caption("How well each hospital's model detects each of the 14 findings.")
    test_set = "local" if st.session_state.get("auc_local") else "common"
    results, final = _results(context, test_set)
    if results.empty:
        st.info(
            f"No evaluation on the {test_set} test set is stored yet. If the run is still "
            "training, reload in a few minutes; the Training progress page shows what exists."
        )
        return
    methods = method_order(results["method"])
    method, test_set, compare = _controls(methods)
    if not final:
        st.warning(
            "No final results yet (the run is still training): showing the newest interim "
            "evaluation, without confidence intervals."
        )
    sites = data.load_sites(context.store_path, context.run_id, context.version)
    frame = heatmap_frame(
        results,
        sites,
        method=method,
        compare=compare,
        test_set=test_set,
        min_positives=context.settings.min_positives,
    )
    st.altair_chart(charts.heatmap_chart(frame, compare=compare), width="stretch")
    _legend(context.settings.min_positives)
    _means(results, method)
    _drill_down(context, frame, method, test_set)


if __name__ == "__main__":
    run_page(render)
