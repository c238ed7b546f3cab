"""Altair charts of the app: AUC heat map, ROC curves, network graph, progress, privacy, viewer."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from app.network import NETWORK_DOMAIN, NETWORK_PX, STATE_COLOURS
from data_tools.labels import FINDINGS
from hospital_node.evaluation.records import RocCurve

_DIFF_LIMIT = 0.3  # the difference colour scale saturates at +/- this much AUC
_MIN_LABEL_CELL_PX = 25  # narrower heat-map cells show colour only (numbers in the tooltip)


def _heatmap_colour(compare: str) -> tuple[alt.Color, str]:
    """The colour scale and value title: AUC, or a difference against a reference."""
    # a horizontal legend under the map: a map of one or two sites is too low for a vertical one
    legend = alt.Legend(orient="bottom", direction="horizontal", gradientLength=220)
    if compare == "none":
        scale = alt.Scale(scheme="viridis", domain=[0.5, 1.0], clamp=True)
        return alt.Color("value:Q", title="AUC", scale=scale, legend=legend), "AUC"
    scale = alt.Scale(scheme="redblue", domain=[-_DIFF_LIMIT, _DIFF_LIMIT], clamp=True)
    return alt.Color("value:Q", title="Difference", scale=scale, legend=legend), "Difference (AUC)"


def heatmap_chart(frame: pd.DataFrame, *, compare: str) -> alt.Chart:
    """Sites x findings; colour = AUC (or difference), text = value, '•' = never seen there."""
    colour, value_title = _heatmap_colour(compare)
    x = alt.X(
        "finding:N",
        sort=list(FINDINGS),
        title=None,
        axis=alt.Axis(labelAngle=-40, labelOverlap=False, orient="top"),
    )
    y = alt.Y("site:N", sort=list(dict.fromkeys(frame["site"])), title="Site")
    tooltip = [
        alt.Tooltip("site:N", title="Site"),
        alt.Tooltip("finding:N", title="Finding"),
        alt.Tooltip("label:N", title=value_title),
        alt.Tooltip("auc_text:N", title="AUC"),
        alt.Tooltip("ci_text:N", title="95% CI"),
        alt.Tooltip("reference_text:N", title="Reference AUC"),
        alt.Tooltip("n_pos:Q", title="Positive test images"),
        alt.Tooltip("n_neg:Q", title="Negative test images"),
        alt.Tooltip("train_positives:Q", title="Positive training images"),
        alt.Tooltip("note:N", title="Note"),
    ]
    base = alt.Chart(frame).encode(x=x, y=y, tooltip=tooltip)
    cells = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=colour,
        opacity=alt.condition("datum.reliable", alt.value(1.0), alt.value(0.45)),
    )
    # White text on dark cells; faded (unreliable) cells are light, so they keep black text.
    dark = "datum.value < 0.72" if compare == "none" else f"abs(datum.value) > {_DIFF_LIMIT * 0.6}"
    dark = f"datum.reliable && ({dark})"
    text = base.mark_text(fontSize=10).encode(
        text="label:N",
        color=alt.condition(dark, alt.value("white"), alt.value("black")),
        # In a narrow window the cells get too small for numbers: colour and tooltip remain.
        opacity=alt.condition(
            f"width / {len(FINDINGS)} >= {_MIN_LABEL_CELL_PX}", alt.value(1), alt.value(0)
        ),
    )
    # The marker sits in the cell's top-right corner whatever the cell's size (band position).
    marker = (
        alt.Chart(frame)
        .transform_filter("datum.never_seen")
        .mark_point(shape="circle", filled=True, size=36, color="#e4002b", stroke="white")
        .encode(
            x=alt.X("finding:N", sort=list(FINDINGS), bandPosition=0.86),
            y=alt.Y("site:N", sort=list(dict.fromkeys(frame["site"])), bandPosition=0.2),
            tooltip=tooltip,
        )
    )
    return (cells + text + marker).properties(height=alt.Step(34))


def roc_chart(curve: RocCurve, *, title: str) -> alt.LayerChart:
    """One ROC curve with the chance diagonal and the Youden operating point."""
    points = pd.DataFrame(
        {
            "fpr": curve.fpr,
            "tpr": curve.tpr,
            "threshold": [None if math.isinf(t) else t for t in curve.thresholds],
        }
    )
    axis_x = alt.X(
        "fpr:Q", title="1 - specificity (false-positive rate)", scale=alt.Scale(domain=[0, 1])
    )
    axis_y = alt.Y(
        "tpr:Q", title="Sensitivity (true-positive rate)", scale=alt.Scale(domain=[0, 1])
    )
    line = (
        alt.Chart(points)
        .mark_line(interpolate="step-after", strokeWidth=2)
        .encode(
            x=axis_x,
            y=axis_y,
            tooltip=[
                alt.Tooltip("fpr:Q", title="False-positive rate", format=".3f"),
                alt.Tooltip("tpr:Q", title="Sensitivity", format=".3f"),
                alt.Tooltip("threshold:Q", title="Probability threshold", format=".3f"),
            ],
        )
    )
    chance = (
        alt.Chart(pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]}))
        .mark_line(strokeDash=[4, 4], color="gray")
        .encode(x="fpr:Q", y="tpr:Q")
    )
    op = pd.DataFrame(
        {
            "fpr": [1 - curve.specificity],
            "tpr": [curve.sensitivity],
            "label": ["operating point (Youden)"],
        }
    )
    point = (
        alt.Chart(op)
        .mark_point(size=90, filled=True, color="#d62728")
        .encode(x="fpr:Q", y="tpr:Q", tooltip=[alt.Tooltip("label:N", title="")])
    )
    return (chance + line + point).properties(title=title, height=320)


def roc_grid(curves: dict[str, RocCurve], *, columns: int = 4) -> alt.FacetChart:
    """Small multiples: one ROC curve per finding."""
    rows = [
        {"finding": f, "fpr": x, "tpr": y}
        for f, c in curves.items()
        for x, y in zip(c.fpr, c.tpr, strict=True)
    ]
    return (
        alt.Chart(pd.DataFrame(rows))
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("fpr:Q", title="1 - specificity", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("tpr:Q", title="Sensitivity", scale=alt.Scale(domain=[0, 1])),
        )
        .properties(width=140, height=140)
        .facet(facet=alt.Facet("finding:N", sort=list(FINDINGS), title=None), columns=columns)
    )


def network_chart(nodes: pd.DataFrame, edges: pd.DataFrame) -> alt.LayerChart:
    """Hospitals on a circle, edges as rules, nodes coloured by state; a fixed square frame
    (network.NETWORK_PX) whose margin holds the largest marker (network.marker_radius_px)."""
    axis = alt.Axis(labels=False, ticks=False, grid=False, domain=False, title=None)
    scale = alt.Scale(domain=[-NETWORK_DOMAIN, NETWORK_DOMAIN], nice=False, zero=False)
    x, y = alt.X("x:Q", axis=axis, scale=scale), alt.Y("y:Q", axis=axis, scale=scale)
    rules = (
        alt.Chart(edges)
        .mark_rule(color="#9e9e9e")
        .encode(
            x=x,
            y=y,
            x2="x2:Q",
            y2="y2:Q",
            strokeWidth=alt.StrokeWidth("messages:Q", legend=None, scale=alt.Scale(range=[1, 6])),
            tooltip=[
                alt.Tooltip("edge:N", title="Link"),
                alt.Tooltip("messages:Q", title="Messages (both ways)"),
                alt.Tooltip("kilobytes:Q", title="Data (kB, both ways)", format=".1f"),
                alt.Tooltip("last_step:Q", title="Last exchange (step)"),
            ],
        )
    )
    present = [s for s in STATE_COLOURS if s in set(nodes["state_group"])]
    node_marks = alt.Chart(nodes).encode(
        x=x,
        y=y,
        tooltip=[
            alt.Tooltip("site:N", title="Hospital"),
            alt.Tooltip("state:N", title="State"),
            alt.Tooltip("step:Q", title="Last step"),
            alt.Tooltip("n_train:Q", title="Training images"),
            alt.Tooltip("sent:Q", title="Messages sent"),
            alt.Tooltip("received:Q", title="Messages received"),
            alt.Tooltip("detail:N", title="Detail"),
        ],
    )
    circles = node_marks.mark_circle(opacity=1).encode(
        size=alt.Size("marker_area:Q", legend=None, scale=None),
        color=alt.Color(
            "state_group:N",
            title="State",
            scale=alt.Scale(domain=present, range=[STATE_COLOURS[s] for s in present]),
            legend=alt.Legend(orient="bottom", columns=3),
        ),
        stroke=alt.condition("datum.is_self", alt.value("black"), alt.value("white")),
        strokeWidth=alt.condition("datum.is_self", alt.value(3), alt.value(1)),
    )
    labels = node_marks.mark_text(color="white", fontWeight="bold").encode(
        text="site:N", size=alt.Size("font_px:Q", legend=None, scale=None)
    )
    return (rules + circles + labels).properties(width=NETWORK_PX, height=NETWORK_PX)


def calibration_chart(frame: pd.DataFrame, *, title: str) -> alt.LayerChart:
    """Reliability diagram: observed rate against mean predicted probability per bin (dot
    area = images in the bin), with the diagonal of perfect calibration."""
    axis_x = alt.X(
        "mean_predicted:Q", title="Predicted probability (bin mean)", scale=alt.Scale(domain=[0, 1])
    )
    axis_y = alt.Y(
        "observed:Q", title="Observed fraction with the finding", scale=alt.Scale(domain=[0, 1])
    )
    diagonal = (
        alt.Chart(pd.DataFrame({"mean_predicted": [0, 1], "observed": [0, 1]}))
        .mark_line(strokeDash=[4, 4], color="gray")
        .encode(x="mean_predicted:Q", y="observed:Q")
    )
    base = alt.Chart(frame).encode(
        x=axis_x,
        y=axis_y,
        tooltip=[
            alt.Tooltip("bin:N", title="Probability bin"),
            alt.Tooltip("count:Q", title="Images"),
            alt.Tooltip("mean_predicted:Q", title="Mean predicted", format=".3f"),
            alt.Tooltip("observed:Q", title="Observed rate", format=".3f"),
        ],
    )
    line = base.mark_line(color="#1f77b4")
    dots = base.mark_circle(color="#1f77b4", opacity=0.9).encode(
        size=alt.Size("count:Q", legend=None, scale=alt.Scale(range=[30, 400]))
    )
    return (diagonal + line + dots).properties(title=title, height=320)


def line_chart(
    frame: pd.DataFrame,
    *,
    y: str,
    y_title: str,
    colour: str,
    colour_title: str,
    log: bool = False,
) -> alt.Chart:
    """A line per `colour` value of `y` against local steps; log scale on request."""
    scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "step:Q",
                title="Local steps per hospital",
                axis=alt.Axis(format="d", tickMinStep=1),
            ),
            y=alt.Y(f"{y}:Q", title=y_title, scale=scale),
            color=alt.Color(
                f"{colour}:N",
                title=colour_title,
                sort=list(FINDINGS) if colour == "finding" else "ascending",
                scale=alt.Scale(scheme="category20" if colour == "finding" else "tableau10"),
                legend=alt.Legend(orient="bottom", columns=4),
            ),
            tooltip=[
                alt.Tooltip(f"{colour}:N", title=colour_title),
                alt.Tooltip("step:Q", title="Step"),
                alt.Tooltip(f"{y}:Q", title=y_title, format=".3g" if log else ".3f"),
            ],
        )
        # Room for the legend under the plot: about one row per four entries.
        .properties(height=320 + 22 * math.ceil(frame[colour].nunique() / 4))
    )


def epsilon_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Epsilon spent per site (bars) against its budget (black ticks)."""
    base = alt.Chart(frame).encode(y=alt.Y("site:N", title="Hospital", sort=list(frame["site"])))
    bars = base.mark_bar().encode(
        x=alt.X("epsilon:Q", title="Epsilon spent (privacy loss, lower is more private)"),
        color=alt.condition("datum.exhausted", alt.value("#d62728"), alt.value("#1f77b4")),
        tooltip=[
            alt.Tooltip("site:N", title="Hospital"),
            alt.Tooltip("epsilon:Q", title="Epsilon spent", format=".2f"),
            alt.Tooltip("budget:Q", title="Budget", format=".2f"),
            alt.Tooltip("delta:Q", title="Delta", format=".1e"),
            alt.Tooltip("releases:Q", title="Noisy releases"),
        ],
    )
    ticks = (
        base.transform_filter("isValid(datum.budget)")
        .mark_tick(color="black", thickness=3, size=28)
        .encode(x="budget:Q")
    )
    return (bars + ticks).properties(height=alt.Step(34))


def probability_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """The model's 14 probabilities (bars) with the site's operating points (black ticks)."""
    base = alt.Chart(frame).encode(y=alt.Y("finding:N", sort=list(FINDINGS), title=None))
    bars = base.mark_bar().encode(
        x=alt.X("probability:Q", title="Model probability", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color(
            "call:N",
            title="Versus operating point",
            scale=alt.Scale(
                domain=["above", "below", "no operating point"],
                range=["#d62728", "#1f77b4", "#9e9e9e"],
            ),
        ),
        tooltip=[
            alt.Tooltip("finding:N", title="Finding"),
            alt.Tooltip("probability:Q", title="Probability", format=".3f"),
            alt.Tooltip("threshold:Q", title="Operating point", format=".3f"),
            alt.Tooltip("call:N", title="Versus operating point"),
        ],
    )
    ticks = (
        base.transform_filter("isValid(datum.threshold)")
        .mark_tick(color="black", thickness=2, size=20)
        .encode(x="threshold:Q")
    )
    return (bars + ticks).properties(height=alt.Step(24))
