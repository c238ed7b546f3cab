"""The per-site page's drill-down: one finding's ROC and calibration, the site's findings table,
its AUC trend and its subgroups (Streamlit rendering; the tables come from review.py and
site_review.py)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data
from app.review import format_auc, format_ci, site_detail, site_order
from app.settings import AppContext
from app.site_review import (
    TEST_SET_LABELS,
    calibration_frame,
    format_ece,
    subgroup_table,
    trend_frame,
)
from data_tools.labels import FINDINGS


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


def _roc_and_calibration(row, curve, calibration, site: str, finding: str) -> None:
    left, right = st.columns(2)
    with left:
        if curve is None:
            st.info(f"No ROC curve for {finding} at {site}: the test set has no positive image.")
        else:
            title = f"ROC curve: {finding} at {site}"
            st.altair_chart(charts.roc_chart(curve, title=title), width="stretch")
            st.caption(
                f"Red dot: the operating point that maximises sensitivity + specificity "
                f"(sensitivity {curve.sensitivity:.2f}, specificity {curve.specificity:.2f}); "
                "a neutral review aid, not a clinical cut-off."
            )
    with right:
        if calibration is None:
            st.info(f"No reliability diagram for {finding} at {site} yet.")
        else:
            title = f"Reliability diagram: {finding} at {site}"
            frame = calibration_frame(calibration)
            st.altair_chart(charts.calibration_chart(frame, title=title), width="stretch")
            st.caption(
                f"Expected calibration error (ECE) {format_ece(calibration.ece)}: the mean gap "
                "between predicted probability and observed rate (0 = probabilities match "
                "frequencies). Dots: images grouped by predicted probability (bigger = more "
                "images); height = how many of them have the finding. On the dashed diagonal "
                "the probabilities mean what they say; below it the model over-estimates, "
                "above it under-estimates."
            )


def _trend(context: AppContext, method: str, site: str, test_set: str) -> None:
    history = data.load_auc_history(
        context.store_path, context.run_id, method, site, context.version, test_set
    )
    trend = trend_frame(history)
    if trend["step"].nunique() < 2:
        return
    st.markdown(f"**AUC over training at {site}** (every evaluation, {TEST_SET_LABELS[test_set]})")
    chart = charts.line_chart(
        trend, y="auc", y_title="AUC", colour="finding", colour_title="Finding"
    )
    st.altair_chart(chart, width="stretch")


def _subgroups(context: AppContext, method: str, site: str, test_set: str, finding: str) -> None:
    frame = data.load_subgroups(
        context.store_path, context.run_id, method, site, test_set, context.version
    )
    table = subgroup_table(frame, finding, min_positives=context.settings.min_positives)
    st.markdown(f"**{finding} at {site} by subgroup** (sex, age band and view position)")
    if table.empty:
        st.caption("No subgroup figures stored for this evaluation (written from this release on).")
        return
    st.dataframe(table, hide_index=True, width="stretch", key="subgroup_table")
    st.caption(
        "From each image's DICOM header ((0010,0040) sex, (0010,1010) age, (0018,5101) view "
        f"position) or the label table. AUCs over fewer than {context.settings.min_positives} "
        "positive or negative images are suppressed: too few to mean anything, and they could "
        "single out patients."
    )


def render_drill_down(context: AppContext, frame: pd.DataFrame, method: str, test_set: str) -> None:
    """Choose a site and a finding; show its figures, curves, findings table, trend, subgroups."""
    st.subheader("One site in detail")
    left, right = st.columns(2)
    site = left.selectbox("Site", site_order(frame["site"]), key="auc_site")
    rows = (
        frame[frame["site"] == site].set_index("finding").reindex(FINDINGS).dropna(subset=["n_pos"])
    )
    findings = list(rows.index)
    available = [f for f in findings if rows.at[f, "auc"] == rows.at[f, "auc"]]  # not NaN
    first = findings.index(available[0]) if available else 0
    finding = right.selectbox("Finding", findings, index=first, key="auc_finding")
    path, run_id, version = context.store_path, context.run_id, context.version
    rocs = data.load_rocs(path, run_id, method, site, test_set, version)
    calibrations = data.load_calibration(path, run_id, method, site, test_set, version)
    row, calibration = rows.loc[finding], calibrations.get(finding)
    _finding_metrics(row, context.settings.min_positives)
    _roc_and_calibration(row, rocs.get(finding), calibration, site, finding)
    detail = site_detail(rows.reset_index(), rocs, min_positives=context.settings.min_positives)
    if not detail.empty:
        detail.insert(8, "ECE", [format_ece(c.ece if (c := calibrations.get(f)) else None)
                                 for f in detail["Finding"]])  # fmt: skip
    st.dataframe(detail, hide_index=True, width="stretch", height="content", key="findings_table")
    _subgroups(context, method, site, test_set, finding)
    _trend(context, method, site, test_set)
    if rocs:
        with st.expander("All ROC curves of this site"):
            st.altair_chart(charts.roc_grid(rocs), width="content")
