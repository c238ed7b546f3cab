"""Calibration (reliability bins, ECE), subgroup AUCs, the full review and shareable summaries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from data_tools.labels import FINDINGS
from hospital_node.evaluation.calibration import calibration_per_finding, reliability_bins
from hospital_node.evaluation.metrics import evaluate_scores
from hospital_node.evaluation.records import EvaluationError
from hospital_node.evaluation.review import review_scores
from hospital_node.evaluation.subgroups import age_band, subgroup_evaluations
from hospital_node.evaluation.summary import summarize


def _data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(FINDINGS))) < 0.3).astype(np.int64)
    logits = 1.5 * y + rng.normal(size=y.shape)
    probs = 1 / (1 + np.exp(-logits))
    patients = [f"P{i // 2}" for i in range(n)]  # two images per patient
    return y, probs, patients


# --- calibration ---------------------------------------------------------------------------


def test_reliability_bins_golden_values():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])

    cal = reliability_bins(y, p, n_bins=2)

    low, high = cal.bins
    assert (low.count, high.count) == (3, 2)
    assert low.mean_predicted == pytest.approx((0.05 + 0.15 + 0.15) / 3)
    assert low.observed == pytest.approx(1 / 3)
    assert high.mean_predicted == pytest.approx(0.975) and high.observed == 1.0
    # ECE = 3/5 * |1/3 - 0.1166..| + 2/5 * |1 - 0.975|
    assert cal.ece == pytest.approx(3 / 5 * abs(1 / 3 - 0.35 / 3) + 2 / 5 * 0.025)
    assert (cal.n_images, cal.n_pos) == (5, 3)


def test_reliability_bins_agree_with_scikit_learn():
    y, probs, _ = _data(400)

    cal = reliability_bins(y[:, 0], probs[:, 0], n_bins=10)

    observed, predicted = calibration_curve(y[:, 0], probs[:, 0], n_bins=10, strategy="uniform")
    filled = [b for b in cal.bins if b.count]
    assert [b.observed for b in filled] == pytest.approx(list(observed))
    assert [b.mean_predicted for b in filled] == pytest.approx(list(predicted))


def test_a_calibrated_model_has_a_small_ece_and_a_biased_one_a_large_one():
    rng = np.random.default_rng(3)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(int)  # labels drawn with exactly these probabilities

    assert reliability_bins(y, p).ece < 0.02
    assert reliability_bins(y, p**3).ece > 0.15  # systematically too low


@given(st.lists(st.floats(0, 1), min_size=1, max_size=60), st.integers(2, 20))
@settings(max_examples=60, deadline=None)
def test_ece_is_a_weighted_mean_in_unit_range(probs, n_bins):
    p = np.array(probs)
    y = (p > 0.5).astype(int)
    cal = reliability_bins(y, p, n_bins=n_bins)
    assert 0.0 <= cal.ece <= 1.0
    assert sum(b.count for b in cal.bins) == len(probs)


def test_calibration_refuses_bad_input_and_skips_findings_without_positives():
    y, probs, _ = _data(40)
    y[:, 3] = 0

    curves = calibration_per_finding(y, probs)

    assert curves[FINDINGS[3]] is None and curves[FINDINGS[0]] is not None
    with pytest.raises(EvaluationError):
        reliability_bins(np.array([0, 1]), np.array([0.2, 1.5]))
    with pytest.raises(EvaluationError):
        reliability_bins(np.array([0, 1]), np.array([0.2]))


# --- subgroups -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("years", "band"),
    [(None, "unknown"), (0.5, "0-17"), (17.9, "0-17"), (18, "18-39"), (59.99, "40-59"),
     (60, "60-79"), (80, "80+"), (104, "80+"), (-1, "unknown"), (float("nan"), "unknown")],
)  # fmt: skip
def test_age_bands(years, band):
    assert age_band(years) == band


def test_subgroup_auc_equals_the_auc_on_the_subgroup_alone():
    y, probs, patients = _data(200)
    sex = ["F" if i % 3 else "M" for i in range(200)]

    results = subgroup_evaluations(y, probs, patients, {"sex": sex}, with_ci=False)

    assert [(r.attribute, r.group) for r in results] == [("sex", "F"), ("sex", "M")]
    female = np.array([s == "F" for s in sex])
    assert results[0].evaluation.n_images == female.sum()
    expected = roc_auc_score(y[female, 0], probs[female, 0])
    assert results[0].evaluation.auc[0] == pytest.approx(expected)
    assert results[1].evaluation.n_pos[0] == y[~female, 0].sum()


def test_review_holds_every_part_and_is_reproducible_from_its_seed():
    y, probs, patients = _data(150)
    groups = {"view_position": ["PA" if i % 2 else "AP" for i in range(150)]}

    def review(seed: int):
        rng = np.random.default_rng(seed)
        return review_scores(y, probs, patients, groups=groups, rng=rng, n_boot=50)

    first, again = review(1), review(1)

    assert first.evaluation.ci is not None and first.evaluation.ci_level == 0.95
    assert first.evaluation.ci == again.evaluation.ci
    assert set(first.rocs) == set(first.calibration) == set(FINDINGS)
    assert [s.group for s in first.subgroups] == ["PA", "AP"]
    assert all(s.evaluation.ci is not None for s in first.subgroups)
    plain = review_scores(y, probs, patients, groups=None, rng=np.random.default_rng(1), n_boot=0)
    assert plain.evaluation.ci is None and plain.subgroups == ()


# --- summaries -----------------------------------------------------------------------------


def test_summary_suppresses_small_cells_and_keeps_only_aggregates():
    y, probs, patients = _data(60)
    y[:, 0] = 0
    y[:3, 0] = 1  # 3 positives: below the threshold of 5
    evaluation = evaluate_scores(
        y, probs, patients, with_ci=True, rng=np.random.default_rng(0), n_boot=30
    )

    summary = summarize(evaluation, origin="N1", method="ecl-pdmm", boot_epoch=4, step=200,
                        created_at=1.7e9, min_positives=5)  # fmt: skip

    cells = {f.finding: f for f in summary.findings}
    assert cells[FINDINGS[0]].suppressed and cells[FINDINGS[0]].auc is None
    assert cells[FINDINGS[0]].n_pos is None
    shown = cells[FINDINGS[1]]
    assert not shown.suppressed and shown.auc == evaluation.auc[1]
    assert (shown.ci_low, shown.ci_high) == evaluation.ci[1]
    assert summary.order_key == (4, 200) and summary.n_images == 60
