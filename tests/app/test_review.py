"""Formatting and table rules of the per-site review (pure functions)."""

from __future__ import annotations

import math

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
from hospital_node.store_read import StoreReader


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
