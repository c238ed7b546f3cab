"""hospital_node.evaluation.metrics: AUC, patient-cluster bootstrap, ROC, consensus residual."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hospital_node.evaluation.metrics import (
    EvaluationError,
    bootstrap_auc_ci,
    consensus_residual,
    evaluate_scores,
    macro_mean,
    operating_point,
    per_finding_auc,
    roc_curve_summary,
    roc_curves,
    weighted_rank_auc,
)


def _synthetic(
    rng: np.random.Generator, n_images: int, n_findings: int = 14, prevalence: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative, tie-rich scores (rounded to 0.1)."""
    y = (rng.random((n_images, n_findings)) < prevalence).astype(np.int64)
    scores = np.round(y * 1.0 + rng.normal(size=y.shape), 1)
    return y, scores


def _width(ci: tuple[float, float] | None) -> float:
    assert ci is not None
    return ci[1] - ci[0]


# --- AUC -----------------------------------------------------------------------------------


def test_auc_golden_value_and_sklearn_agreement():
    y = np.array([[0], [0], [1], [1]])
    s = np.array([[0.1], [0.4], [0.35], [0.8]])

    aucs = per_finding_auc(y, s)

    assert aucs == [pytest.approx(0.75)]
    assert aucs[0] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))


def test_auc_is_none_without_positives_or_negatives():
    rng = np.random.default_rng(0)
    y, s = _synthetic(rng, 50, n_findings=3)
    y[:, 1] = 0  # no positives
    y[:, 2] = 1  # no negatives

    aucs = per_finding_auc(y, s)

    assert aucs[0] is not None and 0.0 <= aucs[0] <= 1.0
    assert aucs[1] is None and aucs[2] is None


def test_macro_mean_skips_unavailable():
    assert macro_mean([0.6, None, 0.8]) == pytest.approx(0.7)
    assert macro_mean([None, None]) is None
    assert macro_mean([]) is None


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        (np.zeros((4, 2)), np.zeros((4, 3)), "must both be"),
        (np.full((4, 1), 2), np.zeros((4, 1)), "only 0 and 1"),
        (np.array([[0], [1]]), np.array([[0.1], [np.nan]]), "NaN"),
    ],
)
def test_bad_inputs_raise_evaluation_error(y, s, match):
    with pytest.raises(EvaluationError, match=match):
        per_finding_auc(y, s)


def test_rank_auc_equals_sklearn_on_unresampled_data_with_ties():
    rng = np.random.default_rng(1)
    y, s = _synthetic(rng, 1000)

    for k in range(y.shape[1]):
        auc, valid = weighted_rank_auc(y[:, k], s[:, k], np.ones((1, y.shape[0])))

        assert valid[0]
        assert auc[0] == pytest.approx(roc_auc_score(y[:, k], s[:, k]), abs=1e-12)


def test_rank_auc_with_integer_weights_equals_auc_of_repeated_data():
    rng = np.random.default_rng(2)
    y, s = _synthetic(rng, 200, n_findings=1)
    weights = rng.integers(0, 4, size=(3, 200)).astype(float)

    auc, _ = weighted_rank_auc(y[:, 0], s[:, 0], weights)

    for b in range(3):
        idx = np.repeat(np.arange(200), weights[b].astype(int))
        assert auc[b] == pytest.approx(roc_auc_score(y[idx, 0], s[idx, 0]), abs=1e-12)


# --- bootstrap -----------------------------------------------------------------------------


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(3)
    y, s = _synthetic(rng, 600)
    patients = np.arange(600) // 2

    aucs = per_finding_auc(y, s)
    cis = bootstrap_auc_ci(y, s, patients, rng=np.random.default_rng(4))

    for auc, ci in zip(aucs, cis, strict=True):
        assert ci is not None and ci[0] <= auc <= ci[1]


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(5)
    y_small, s_small = _synthetic(rng, 200, n_findings=4, prevalence=0.3)
    y_large, s_large = _synthetic(rng, 3000, n_findings=4, prevalence=0.3)

    small = bootstrap_auc_ci(y_small, s_small, np.arange(200), rng=np.random.default_rng(6))
    large = bootstrap_auc_ci(y_large, s_large, np.arange(3000), rng=np.random.default_rng(6))

    for ci_small, ci_large in zip(small, large, strict=True):
        assert _width(ci_large) < 0.6 * _width(ci_small)  # ~ sqrt(200/3000) = 0.26 expected


def test_bootstrap_resamples_patients_not_images():
    rng = np.random.default_rng(7)
    y, s = _synthetic(rng, 300, n_findings=3, prevalence=0.3)
    y5, s5 = np.repeat(y, 5, axis=0), np.repeat(s, 5, axis=0)  # every patient imaged 5 times
    patients5 = np.repeat(np.arange(300), 5)

    single = bootstrap_auc_ci(y, s, np.arange(300), rng=np.random.default_rng(8), n_boot=400)
    clustered = bootstrap_auc_ci(y5, s5, patients5, rng=np.random.default_rng(8), n_boot=400)
    naive = bootstrap_auc_ci(y5, s5, np.arange(1500), rng=np.random.default_rng(8), n_boot=400)

    for one, cluster, independent in zip(single, clustered, naive, strict=True):
        # Duplicated images add no information: same width as one image per patient ...
        assert _width(cluster) == pytest.approx(_width(one), rel=0.25)
        # ... whereas treating them as independent patients shrinks it by about 1/sqrt(5).
        assert _width(independent) < 0.7 * _width(cluster)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(9)
    y, s = _synthetic(rng, 300)
    patients = np.arange(300) // 3

    first = bootstrap_auc_ci(y, s, patients, rng=np.random.default_rng(10))
    again = bootstrap_auc_ci(y, s, patients, rng=np.random.default_rng(10))
    other = bootstrap_auc_ci(y, s, patients, rng=np.random.default_rng(11))

    assert first == again
    assert first != other


def test_bootstrap_ci_none_when_unavailable_or_too_few_valid_resamples():
    y = np.zeros((1000, 2), dtype=int)
    y[0, 1] = 1  # one positive patient: ~63% of resamples contain it
    s = np.random.default_rng(12).random((1000, 2))
    patients = np.arange(1000)

    lenient = bootstrap_auc_ci(y, s, patients, rng=np.random.default_rng(0), n_boot=100)
    strict = bootstrap_auc_ci(
        y, s, patients, rng=np.random.default_rng(0), n_boot=100, min_valid_fraction=0.9
    )

    assert lenient[0] is None and strict[0] is None  # no positives at all
    assert lenient[1] is not None
    assert strict[1] is None


def test_bootstrap_1000_images_14_findings_200_resamples_is_fast():
    rng = np.random.default_rng(13)
    y, s = _synthetic(rng, 1000)
    patients = rng.integers(0, 400, size=1000)

    started = time.perf_counter()
    cis = bootstrap_auc_ci(y, s, patients, rng=rng, n_boot=200)
    elapsed = time.perf_counter() - started

    assert all(ci is not None for ci in cis)
    assert elapsed < 2.0, f"bootstrap took {elapsed:.2f} s"


def test_bootstrap_rejects_bad_arguments():
    y, s = _synthetic(np.random.default_rng(0), 20, n_findings=1, prevalence=0.5)
    with pytest.raises(EvaluationError, match="one id per image"):
        bootstrap_auc_ci(y, s, np.arange(19), rng=np.random.default_rng(0))
    with pytest.raises(EvaluationError, match="n_boot"):
        bootstrap_auc_ci(y, s, np.arange(20), rng=np.random.default_rng(0), n_boot=0)


# --- Evaluation bundle ---------------------------------------------------------------------


def test_evaluate_scores_bundles_everything():
    rng = np.random.default_rng(14)
    y, s = _synthetic(rng, 400)
    y[:, 13] = 0  # Hernia absent from this test set
    patients = np.arange(400) // 4

    evaluation = evaluate_scores(y, s, patients, with_ci=True, rng=rng, n_boot=50)

    assert evaluation.auc[13] is None and evaluation.ci is not None and evaluation.ci[13] is None
    assert evaluation.n_pos[13] == 0 and evaluation.n_neg[13] == 400
    assert evaluation.n_pos[0] + evaluation.n_neg[0] == 400
    assert evaluation.mean_auc == pytest.approx(np.mean([a for a in evaluation.auc if a]))
    assert (evaluation.n_images, evaluation.n_patients, evaluation.ci_level) == (400, 100, 0.95)


def test_evaluate_scores_without_ci_and_without_rng():
    y, s = _synthetic(np.random.default_rng(15), 100)

    evaluation = evaluate_scores(y, s, np.arange(100), with_ci=False)

    assert evaluation.ci is None and evaluation.ci_level is None
    with pytest.raises(EvaluationError, match="rng"):
        evaluate_scores(y, s, np.arange(100), with_ci=True)


# --- ROC -----------------------------------------------------------------------------------


def test_operating_point_maximises_youden_j():
    fpr = np.array([0.0, 0.1, 0.5, 1.0])
    tpr = np.array([0.0, 0.6, 0.9, 1.0])
    thresholds = np.array([np.inf, 0.8, 0.5, 0.1])

    assert operating_point(fpr, tpr, thresholds) == pytest.approx((0.8, 0.6, 0.9))


def test_roc_curves_are_downsampled_and_keep_ends_and_youden_point():
    rng = np.random.default_rng(16)
    y = (rng.random(5000) < 0.3).astype(int)
    s = y + rng.normal(size=5000)

    curve = roc_curve_summary(y, s, max_points=51)
    assert curve is not None
    fpr, tpr, thresholds = (np.array(v) for v in (curve.fpr, curve.tpr, curve.thresholds))

    assert len(fpr) <= 53 and len(fpr) == len(tpr) == len(thresholds)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(thresholds) <= 0)
    assert curve is not None and curve.threshold in curve.thresholds
    assert math.isinf(curve.thresholds[0])


def test_roc_unavailable_finding():
    y = np.zeros((10, 2), dtype=int)
    y[:5, 0] = 1
    s = np.random.default_rng(0).random((10, 2))

    curves = roc_curves(y, s, findings=("A", "B"))

    assert curves["A"] is not None and curves["B"] is None
    with pytest.raises(EvaluationError, match="max_points"):
        roc_curve_summary(y[:, 0], s[:, 0], max_points=2)


# --- consensus residual --------------------------------------------------------------------


def test_consensus_residual_golden_values():
    models = [
        {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[0.0]])},
        {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([[0.0]])},
        {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[12.0]])},
    ]  # pairwise distances 5, 12, 13

    assert consensus_residual(models) == pytest.approx(13.0)
    assert consensus_residual(models[:2]) == pytest.approx(5.0)
    assert consensus_residual(models[:1]) == 0.0


def test_consensus_residual_is_exact_for_nearly_equal_large_models():
    base = torch.full((1000,), 1.0e4, dtype=torch.float64)
    nudged = base.clone()
    nudged[7] += 1.0e-6

    assert consensus_residual([{"w": base}, {"w": nudged}]) == pytest.approx(1.0e-6, rel=1e-6)


def test_consensus_residual_eight_models_fast_and_checks_names():
    gen = torch.Generator().manual_seed(0)
    models = [{"w": torch.randn(1_000_000, generator=gen)} for _ in range(8)]

    started = time.perf_counter()
    residual = consensus_residual(models)

    assert time.perf_counter() - started < 2.0
    assert residual > 0
    with pytest.raises(EvaluationError, match="tensor"):
        consensus_residual([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
