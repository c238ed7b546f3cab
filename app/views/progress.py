"""Training progress: mean and per-finding AUC against local steps, consensus residual (log)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data
from app.review import METHOD_LABELS, default_method, method_order, site_order
from app.settings import AppContext
from app.shell import run_page
from hospital_node.store.schema import ALL_SITES

EVERY_SITE = "Every hospital (mean)"
PROGRESS_METRICS = ("mean_auc_common", "mean_auc_local", "train_loss", "consensus_residual")
TEST_SET_NAMES = {"common": "common test set", "local": "own test set"}


def mean_auc_curves(metrics: pd.DataFrame, site: str, test_set: str = "common") -> pd.DataFrame:
    """Mean AUC on one test set per (method, step) at one site, or averaged over hospitals;
    the centralized model (site 'all') is kept as the reference in both cases."""
    auc = metrics[(metrics["name"] == f"mean_auc_{test_set}") & metrics["value"].notna()]
    central = auc[auc["site"] == ALL_SITES]
    hospitals = auc[auc["site"] != ALL_SITES]
    if site != EVERY_SITE:
        hospitals = hospitals[hospitals["site"] == site]
    grouped = hospitals.groupby(["method", "step"], as_index=False)["value"].mean()
    both = pd.concat([grouped, central[["method", "step", "value"]]], ignore_index=True)
    both["method"] = both["method"].map(lambda m: METHOD_LABELS.get(m, m).split(" (")[0])
    return both.rename(columns={"value": "mean_auc"})


def residual_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """Consensus residual per (method, step); zeros (a single model) cannot go on a log axis."""
    res = metrics[(metrics["name"] == "consensus_residual") & (metrics["site"] == ALL_SITES)]
    res = res[res["value"] > 0][["method", "step", "value"]].rename(columns={"value": "residual"})
    return res.assign(method=res["method"].map(lambda m: METHOD_LABELS.get(m, m).split(" (")[0]))


def _mean_auc(metrics: pd.DataFrame, hospitals: list[str], test_set: str) -> str:
    st.subheader("Mean AUC over findings")
    site = st.selectbox("Site", [EVERY_SITE, *hospitals], key="progress_site")
    curves = mean_auc_curves(metrics, site, test_set)
    if curves.empty:
        st.info("No evaluation stored yet; reload once the first evaluation has run.")
    else:
        chart = charts.line_chart(
            curves,
            y="mean_auc",
            y_title=f"Mean AUC ({TEST_SET_NAMES[test_set]})",
            colour="method",
            colour_title="Method",
        )
        st.altair_chart(chart, width="stretch")
    return site


def _per_finding(
    context: AppContext, methods: list[str], site: str, hospitals: list[str], test_set: str
) -> None:
    st.subheader("AUC per finding")
    left, right = st.columns(2)
    method = left.selectbox(
        "Method",
        methods,
        index=methods.index(default_method(methods)),
        format_func=lambda m: METHOD_LABELS.get(m, m),
        key="progress_method",
    )
    choices = [ALL_SITES] if method == "centralized" else hospitals
    default = choices.index(site) if site in choices else 0
    chosen = right.selectbox("Site ", choices, index=default, key="progress_finding_site")
    history = data.load_auc_history(
        context.store_path, context.run_id, method, chosen, context.version, test_set
    )
    history = history[history["auc"].notna()]
    if history.empty:
        st.info(f"No per-finding evaluation of {method} at {chosen} yet.")
        return
    chart = charts.line_chart(
        history,
        y="auc",
        y_title=f"AUC ({TEST_SET_NAMES[test_set]})",
        colour="finding",
        colour_title="Finding",
    )
    st.altair_chart(chart, width="stretch")


def _residual(metrics: pd.DataFrame, node: bool) -> None:
    st.subheader("Consensus residual")
    if node:
        st.info(
            "A hospital's node cannot measure the consensus residual (the distance between "
            "all hospitals' models): it sees only its own model. The simulation shows it."
        )
        return
    st.caption(
        "The largest distance between any two hospitals' models (all parameters). It falls "
        "towards zero as the hospitals agree on one model. Log scale."
    )
    curves = residual_curves(metrics)
    if curves.empty:
        st.info("No consensus residual stored yet (only decentralized methods have one).")
        return
    chart = charts.line_chart(
        curves,
        y="residual",
        y_title="Consensus residual (L2, log scale)",
        colour="method",
        colour_title="Method",
        log=True,
    )
    st.altair_chart(chart, width="stretch")


def render(context: AppContext) -> None:
    """The training progress page."""
    st.title("Training progress")
    st.caption("Horizontal axis: local optimisation steps per hospital.")
    metrics = data.load_metrics(
        context.store_path, context.run_id, PROGRESS_METRICS, context.version
    )
    if metrics.empty:
        st.info("This run has not logged any progress yet. Reload in a minute.")
        return
    info = data.load_run_info(context.store_path, context.run_id, context.version)
    node = info.kind == "node"
    hospitals = [info.run_id] if node else site_order(info.topology.get("nodes", []))
    test_set = "local" if node else "common"
    methods = method_order(metrics["method"])
    site = _mean_auc(metrics, hospitals, test_set)
    _per_finding(context, methods, site, hospitals, test_set)
    _residual(metrics, node)


if __name__ == "__main__":
    run_page(render)
