"""The converged study's pure parts: where the plateau is, and what its report says."""

from __future__ import annotations

from benchmarks.bench_converged import plateau_step
from benchmarks.converged_report import budget_line, markdown


def test_plateau_is_the_first_budget_whose_last_quarter_gains_less_than_the_threshold():
    # the measured curve of 2026-12-05 (sec. 11.1 of docs/algorithm.md), shortened
    curve = [(250, 0.878), (500, 0.958), (750, 0.971), (1000, 0.974), (1250, 0.971)]
    # +0.003 over 750 (its 3/4); budgets under 4x the first evaluation are not candidates
    assert plateau_step(curve) == 1000
    assert plateau_step([(250, 0.878), (500, 0.958), (750, 0.971), (1000, 0.990)]) is None


def test_no_plateau_while_the_curve_still_climbs():
    assert plateau_step([(100, 0.6), (200, 0.7), (300, 0.8), (400, 0.9)]) is None


def _run(auc: float) -> dict:
    curve = [[100, 0.5], [200, 0.2]]
    entry = {"mean_auc": auc, "absent_findings_auc": auc, "min_site_auc": auc - 0.01}
    return {"methods": {"gossip": {**entry, "test_curve": curve, "residual_curve": curve}}}


def test_report_names_a_fixed_budget_and_averages_the_seeds():
    results = {
        "settings": {"steps": "1000"},
        "tuned": {"severe": ["gossip:consensus.learning_rate=0.03"]},
        "runs": {"severe": {"i8/s0": _run(0.80), "i8/s1": _run(0.90)}},
    }
    text = markdown(results)
    assert "Budget: 1,000 local steps per hospital, fixed with --steps." in text
    assert "## severe split, exchange interval 8 (2 seeds)" in text
    assert "| gossip | 0.850 +- 0.071 | 0.850 +- 0.071 | 0.840 +- 0.071 | 0.500 -> 0.200 |" in text
    assert "exchange interval 1" not in text  # no interval-1 runs, no empty table


def test_report_without_a_fixed_budget_names_the_plateau():
    results = {"settings": {"steps": "0"}, "plateau": {"converged_steps": 1000, "max_steps": 4000}}
    assert budget_line(results) == (
        "Budget: 1000 local steps per hospital (plateau of the tuned centralized reference, "
        "searched up to 4000)."
    )
