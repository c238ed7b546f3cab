"""Formatting and table rules of the per-site review (pure functions)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from app.network import circle_layout, neighbours
from app.review import (
    default_method,
    format_auc,
    format_ci,
    format_difference,
    method_order,
    site_order,
    training_positives,
)
from app.views.privacy import odds_factor, protected_unit
from hospital_node.store.reader import StoreReader


@pytest.mark.parametrize(
    ("auc", "n_pos", "expected"),
    [
        (0.83412, 25, "0.834"),
        (0.83412, 9, "≈0.8"),
        (0.5, 10, "0.500"),
        (math.nan, 0, "n/a"),
        (None, 0, "n/a"),
    ],
)
def test_format_auc(auc, n_pos, expected) -> None:
    assert format_auc(auc, n_pos, 10) == expected


def test_format_ci_and_difference() -> None:
    assert format_ci(0.7811, 0.8804, 30, 10) == "0.781–0.880"
    assert format_ci(0.7811, 0.8804, 3, 10) == "unreliable"
    assert format_ci(math.nan, math.nan, 30, 10) == "not computed"
    assert format_difference(0.0512, True) == "+0.05"
    assert format_difference(-0.12, False) == "≈-0.1"
    assert format_difference(math.nan, True) == "n/a"


def test_orders() -> None:
    assert site_order(["N10", "all", "N2", "N1"]) == ["N1", "N2", "N10", "all"]
    assert method_order(["local", "ecl-pdmm", "centralized"]) == [
        "centralized",
        "local",
        "ecl-pdmm",
    ]
    assert default_method(["centralized", "local", "ecl-pdmm"]) == "ecl-pdmm"
    assert default_method(["centralized"]) == "centralized"


def test_layout_and_neighbours() -> None:
    layout = circle_layout(["N1", "N2", "N3", "N4"])
    assert layout["N1"] == pytest.approx((0.0, 1.0))
    assert layout["N3"] == pytest.approx((0.0, -1.0))
    ring = [["N1", "N2"], ["N2", "N3"], ["N3", "N4"], ["N4", "N1"]]
    assert neighbours("N1", ring) == ["N2", "N4"]


def test_pooled_training_positives_sum_the_hospitals(sim_run) -> None:
    with StoreReader.open_readonly(sim_run.store) as reader:
        sites = reader.sites(sim_run.run_id)
    counts = training_positives(sites)
    hospitals = sites[sites["role"] == "hospital"]
    assert counts["all"]["Effusion"] == int(hospitals["Effusion"].sum())
    assert set(counts) == {*hospitals["site"], "all"}


def test_privacy_wording() -> None:
    assert odds_factor(1.0) == "2.7 ×"
    assert odds_factor(8.0) == "2,981 ×"
    assert odds_factor(100.0) == "huge"
    assert "whole data set" in protected_unit("exchange")
    assert "one image" in protected_unit("dpsgd")


@pytest.mark.parametrize("n_nodes", range(2, 17))
def test_every_node_is_drawn_inside_the_frame_without_overlap(n_nodes):
    from app.network import NETWORK_DOMAIN, NETWORK_PX, marker_radius_px, node_table

    names = [f"Hospital-{i}" if i % 5 == 0 else f"N{i}" for i in range(1, n_nodes + 1)]
    empty = pd.DataFrame(columns=["method", "site", "step", "state", "detail", "updated_at"])
    traffic = pd.DataFrame(columns=["method", "src", "dst", "messages", "bytes", "rejected"])
    sites = pd.DataFrame({"site": names, "n_train": [10] * n_nodes})
    nodes = node_table(names, method="ecl-pdmm", status=empty, exchanges=traffic, sites=sites)

    px_per_unit = NETWORK_PX / (2 * NETWORK_DOMAIN)
    radius = (nodes["marker_area"] / math.pi) ** 0.5
    centre_x = NETWORK_PX / 2 + nodes["x"] * px_per_unit
    centre_y = NETWORK_PX / 2 - nodes["y"] * px_per_unit
    assert ((centre_x - radius) >= 0).all() and ((centre_x + radius) <= NETWORK_PX).all()
    assert ((centre_y - radius) >= 0).all() and ((centre_y + radius) <= NETWORK_PX).all()
    gaps = [
        math.dist((centre_x[i], centre_y[i]), (centre_x[j], centre_y[j]))
        for i in range(n_nodes)
        for j in range(i + 1, n_nodes)
    ]
    assert min(gaps) > 2 * marker_radius_px(n_nodes)
    # a name fits its circle (about 0.62 em per bold character) unless the font is at its floor
    fits = 0.62 * nodes["font_px"] * nodes["site"].str.len() <= 2 * radius
    assert (fits | (nodes["font_px"] == 7.0)).all() and fits[nodes["site"].str.len() <= 3].all()
    assert set(nodes["state_group"]) == {"unknown"}
