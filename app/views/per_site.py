"""Per-site AUC review: sites x findings heat map, references, network-wide figures, drill-down.

On a simulation's store the rows are the simulated hospitals, scored on the common test set
(or each on its own). On a hospital node's store the page shows that hospital's own figures,
on its own held-out test patients, from its newest evaluation with confidence intervals; with
`[metrics] share = true` also the figures the other sharing hospitals published.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data
from app.review import (
    COMPARISONS,
    METHOD_LABELS,
    default_method,
    heatmap_frame,
    method_order,
    site_summary,
)
from app.settings import AppContext
from app.shared import shared_heatmap_frame, shared_sources
from app.shell import run_page
from app.site_detail import render_drill_down
from app.site_review import TEST_SET_LABELS, review_status

TEST_SET_HELP = (
    "Common: every hospital's model is scored on the same held-out images, so sites compare "
    "directly. Local: each model is scored on its own hospital's test images (its patients)."
)


def _controls(methods: list[str], node: bool) -> tuple[str, str, str]:
    """(method, test set, comparison) chosen by the user; a node has its own test set only."""
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    method = left.selectbox(
        "Method",
        methods,
        index=methods.index(default_method(methods)),
        format_func=lambda m: METHOD_LABELS.get(m, m),
        key="auc_method",
    )
    if node:
        return method, "local", "none"
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


def _status(shown: pd.DataFrame, node: bool) -> None:
    """Which evaluation the page shows and which test set it comes from."""
    step, newest, has_ci = review_status(shown)
    test_set = str(shown["test_set"].iloc[0])
    if not node:
        if not has_ci:
            st.warning(
                "No final results yet (the run is still training): showing the newest interim "
                "evaluation, without confidence intervals."
            )
        st.caption(f"Test set: {TEST_SET_LABELS[test_set]}.")
        return
    images = int((shown["n_pos"] + shown["n_neg"]).max())
    st.caption(f"Test set: {TEST_SET_LABELS[test_set]}, {images} images.")
    if not has_ci:
        st.warning(
            f"No evaluation with confidence intervals yet: showing the AUCs of step {step}. "
            "Intervals come with the node's next full review ([evaluation] ci_every)."
        )
    elif newest > step:
        st.info(
            f"Latest full review (95% CIs, ROC, calibration, subgroups): step {step}. The "
            f"newest AUCs, step {newest}, are in the trend below."
        )
    else:
        st.info(f"Latest full review (95% CIs, ROC, calibration, subgroups): step {step}.")


def _network(context: AppContext, own: str) -> None:
    """What the hospitals that share metrics published (this one included), side by side."""
    st.subheader("All participating hospitals (shared metrics)")
    shared = data.load_shared(context.store_path, context.run_id, context.version)
    if shared.empty:
        st.info(
            f"Only {own}'s own figures: {own} does not share metrics, or no other hospital has "
            "shared yet. Sharing is opt-in: `[metrics] share = true` in node.toml on every "
            "hospital that takes part (docs/hospital-it.md); only per-finding summaries travel."
        )
        return
    frame = shared_heatmap_frame(shared, min_positives=context.settings.min_positives)
    origins = list(dict.fromkeys(frame["site"]))
    st.caption(f"Hospitals in this view: {', '.join(origins)} ({len(origins)} sharing).")
    st.altair_chart(charts.heatmap_chart(frame, compare="none"), width="stretch")
    st.caption(
        "Each hospital's model on **its own** held-out test patients (local test sets differ "
        "in size and case mix, so these rows are not a ranking). **—** = suppressed by that "
        "hospital (too few positive test images). Hover a cell for the CI and counts."
    )
    st.dataframe(shared_sources(shared, own), hide_index=True, width="stretch", key="shared")


def _no_evaluation(node: bool, test_set: str) -> None:
    if node:
        st.info(
            "This hospital's node has not evaluated its model yet. It evaluates on its own "
            "test split every `[evaluation] every` steps (200 by default); reload later."
        )
    else:
        st.info(
            f"No evaluation on the {test_set} test set is stored yet. If the run is still "
            "training, reload in a few minutes; the Training progress page shows what exists."
        )


def render(context: AppContext) -> None:
    """The per-site AUC review page."""
    st.title("Per-site AUC review")
    info = data.load_run_info(context.store_path, context.run_id, context.version)
    node = info.kind == "node"
    who = f"the model at **{info.run_id}**" if node else "each hospital's model"
    st.caption(f"How well {who} detects each of the 14 findings.")
    test_set = "local" if node or st.session_state.get("auc_local") else "common"
    results = data.load_reviewed_auc(context.store_path, context.run_id, test_set, context.version)
    if results.empty:
        _no_evaluation(node, test_set)
        return
    methods = method_order(results["method"])
    method, test_set, compare = _controls(methods, node)
    shown = results[results["method"] == method]
    _status(shown, node)
    sites = data.load_sites(context.store_path, context.run_id, context.version)
    frame = heatmap_frame(
        results, sites, method=method, compare=compare, test_set=test_set,
        min_positives=context.settings.min_positives,
    )  # fmt: skip
    st.altair_chart(charts.heatmap_chart(frame, compare=compare), width="stretch")
    _legend(context.settings.min_positives)
    if node:
        _network(context, info.run_id)
    else:
        _means(results, method)
    render_drill_down(context, frame, method, test_set)


if __name__ == "__main__":
    run_page(render)
