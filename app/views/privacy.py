"""Privacy page: epsilon spent per hospital against its budget, in plain language."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from app import charts, data
from app.review import METHOD_LABELS, method_order, site_order
from app.settings import AppContext
from app.shell import run_page
from app.views.overview import privacy_setting

NO_PRIVACY_MODES = ("none", "off")
SITE_LEVEL_MODES = ("exchange", "dual-noise")
RECORD_LEVEL_MODES = ("dpsgd", "dp-sgd")
READING = pd.DataFrame(
    {
        "epsilon": ["0.5", "1", "3", "8", "20 or more"],
        "odds change at most (e^ε)": ["1.6 ×", "2.7 ×", "20 ×", "about 3 000 ×", "huge"],
        "reading": ["strong", "strong", "moderate", "weak formal bound", "little protection"],
    }
)
NO_DP_TEXT = (
    "This run did not use differential privacy. No image or label left any hospital, but the "
    "model variables the hospitals exchanged carry no formal privacy guarantee, so there is "
    "no privacy figure (epsilon) to show. A run can add one with `--dp exchange` or "
    "`--dp dpsgd` (see docs/privacy.md)."
)


def protected_unit(mode: str) -> str:
    """What the epsilon protects, in words, for a privacy mode."""
    if mode in SITE_LEVEL_MODES:
        return "the hospital's whole data set (every image and patient together)"
    if mode in RECORD_LEVEL_MODES:
        return "one image (record); one patient with several images is covered more weakly"
    return f"the unit defined by the '{mode}' mode"


def odds_factor(epsilon: float) -> str:
    """e^epsilon in words, e.g. '2.7 ×'."""
    if not math.isfinite(epsilon) or epsilon > 50:
        return "huge"
    value = math.exp(epsilon)
    return f"{value:,.1f} ×" if value < 100 else f"{value:,.0f} ×"


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    used = [
        "—" if math.isnan(b) or b <= 0 else f"{100 * e / b:.0f} %"
        for e, b in zip(frame["epsilon"], frame["budget"], strict=True)
    ]
    return pd.DataFrame(
        {
            "Hospital": frame["site"],
            "Epsilon spent": frame["epsilon"].map(lambda e: f"{e:.2f}"),
            "Budget": frame["budget"].map(lambda b: "no limit" if math.isnan(b) else f"{b:.2f}"),
            "Budget used": used,
            "Delta": frame["delta"].map(lambda d: "—" if math.isnan(d) else f"{d:.1e}"),
            "Odds change at most": frame["epsilon"].map(odds_factor),
            "Noisy releases": frame["releases"],
            "Stopped sending": frame["exhausted"].map(lambda x: "yes" if x else "no"),
        }
    )


def _explain(mode: str) -> None:
    st.markdown(
        f"**What the figure means.** Epsilon (ε) bounds how much anything the other hospitals "
        f"received can depend on {protected_unit(mode)}. Whatever they do with it, their odds "
        "of telling 'with' from 'without' change by at most a factor e^ε, except with a small "
        "probability delta. Lower is more private. The figure is an upper bound: the true "
        "loss may be smaller, never larger. It only grows during training; a hospital whose "
        "budget is spent stops sending and keeps training on its own data."
    )
    st.dataframe(READING, hide_index=True, width="content")


def render(context: AppContext) -> None:
    """The privacy page."""
    st.title("Privacy")
    info = data.load_run_info(context.store_path, context.run_id, context.version)
    spent = data.load_privacy(context.store_path, context.run_id, context.version)
    spent = spent[~spent["mode"].isin(NO_PRIVACY_MODES)]
    if spent.empty:
        setting = privacy_setting(info)
        if setting.startswith("none"):
            st.info(NO_DP_TEXT)
        else:
            st.info(f"Privacy setting: {setting}. No privacy spending has been recorded yet.")
        return
    methods = method_order(spent["method"])
    method = st.selectbox(
        "Method", methods, format_func=lambda m: METHOD_LABELS.get(m, m), key="privacy_method"
    )
    frame = spent[spent["method"] == method].copy()
    frame = frame.set_index("site").loc[site_order(frame["site"])].reset_index()
    mode = str(frame["mode"].iloc[0])
    st.caption(f"Mode: **{mode}** · protects {protected_unit(mode)}")
    st.altair_chart(charts.epsilon_chart(frame), width="stretch")
    st.caption("Bars: epsilon spent so far; black tick: the hospital's budget (if any).")
    stopped = list(frame.loc[frame["exhausted"].astype(bool), "site"])
    if stopped:
        st.warning(
            f"{', '.join(stopped)} spent the privacy budget and stopped sending to peers "
            "(they keep training on their own data)."
        )
    st.dataframe(_table(frame), hide_index=True, width="stretch")
    _explain(mode)


if __name__ == "__main__":
    run_page(render)
