"""Tests of the exchange mechanism: config, sensitivity factor, clipping, noise, epsilon math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from consensus.privacy import (
    PrivacyConfig,
    PrivacyConfigError,
    calibrate_noise_multiplier,
    clip_difference,
    default_delta,
    gaussian_epsilon,
    gaussian_release,
    noise_multiplier_from_opacus,
    opacus_noise_multiplier,
)

DELTA = 1e-5


def exact_gaussian_epsilon(opacus_multiplier: float, steps: int, delta: float) -> float:
    """Tight epsilon of `steps` Gaussian mechanisms (Balle & Wang 2018, Thm. 8), without Opacus."""
    mu = math.sqrt(steps) / opacus_multiplier

    def excess(eps: float) -> float:
        return (
            norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2)) - delta
        )

    return brentq(excess, 0.0, 600.0)


def tensors(seed: int, scale: float = 1.0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": scale * torch.randn(4, 3, 3, 3, generator=g, dtype=dtype),
        "conv.bias": scale * torch.randn(4, generator=g, dtype=dtype),
        "fc.weight": scale * torch.randn(14, 8, generator=g, dtype=dtype),
    }


def global_norm(tensors: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(torch.sum(t.double() ** 2)) for t in tensors.values()))


def minus(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: a[k].double() - b[k].double() for k in a}


# --- sensitivity factor and delta -------------------------------------------------------------


def test_opacus_noise_multiplier_is_half_sigma_because_sensitivity_is_2c():
    assert opacus_noise_multiplier(4.0) == 2.0
    assert noise_multiplier_from_opacus(2.0) == 4.0


@given(st.floats(min_value=1e-3, max_value=1e4))
def test_noise_multiplier_conversion_round_trips(sigma):
    assert noise_multiplier_from_opacus(opacus_noise_multiplier(sigma)) == sigma


def test_default_delta_is_min_of_1e5_and_one_over_n():
    assert default_delta(1_000) == 1e-5
    assert default_delta(1_000_000) == 1e-6
    with pytest.raises(PrivacyConfigError):
        default_delta(0)


# --- config ------------------------------------------------------------------------------------


def test_config_off_needs_nothing_and_has_no_budget():
    assert PrivacyConfig().effective_epsilon_budget is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "loud"}, "choose from"),
        ({"mode": "exchange", "clip_norm": 1.0}, "--noise-multiplier"),
        (
            {"mode": "exchange", "clip_norm": 1.0, "noise_multiplier": 1.0, "target_epsilon": 3.0},
            "exactly one",
        ),
        ({"mode": "exchange", "clip_norm": 1.0, "noise_multiplier": 0.0}, "positive"),
        (
            {"mode": "exchange", "clip_norm": 1.0, "target_epsilon": 3.0, "planned_releases": 0},
            "planned_releases",
        ),
        ({"mode": "exchange", "noise_multiplier": 1.0}, "--clip"),
        ({"mode": "exchange", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1.5}, "delta"),
        (
            {"mode": "dpsgd", "noise_multiplier": 1.0, "clip_norm": 1.0, "epsilon_budget": 3.0},
            "exchange mode",
        ),
        (
            {"mode": "exchange", "noise_multiplier": 1.0, "clip_norm": 1.0, "accountant": "gdp"},
            "accountant",
        ),
    ],
)
def test_config_refuses_settings_without_a_true_guarantee(kwargs, message):
    with pytest.raises(PrivacyConfigError, match=message):
        PrivacyConfig(**kwargs)


def test_a_target_without_planned_releases_is_refused_when_the_noise_is_calibrated():
    config = PrivacyConfig(mode="exchange", clip_norm=1.0, target_epsilon=3.0)  # sim plans it
    with pytest.raises(PrivacyConfigError, match="planned_releases"):
        config.exchange_noise_multiplier(1e-5)


def test_config_budget_defaults_to_target_and_delta_to_record_count():
    config = PrivacyConfig(mode="exchange", target_epsilon=8.0, planned_releases=300, clip_norm=1.0)
    assert config.effective_epsilon_budget == 8.0
    assert config.resolve_delta(50_000) == 1e-5
    assert config.resolve_delta(10**6) == 1e-6
    sigma = config.exchange_noise_multiplier(1e-5)
    assert sigma == calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, releases=300)


# --- epsilon: equal to Opacus, golden numbers, tight ---------------------------------------------


@pytest.mark.parametrize(("sigma", "releases"), [(4.0, 100), (10.0, 1000), (3.0, 7)])
def test_rdp_epsilon_equals_opacus_stepping_with_half_sigma(sigma, releases):
    opacus = RDPAccountant()
    for _ in range(releases):
        opacus.step(noise_multiplier=sigma / 2, sample_rate=1.0)
    assert gaussian_epsilon([(sigma, releases)], delta=DELTA) == opacus.get_epsilon(delta=DELTA)


def test_prv_epsilon_matches_opacus_prv_and_bounds_the_exact_value():
    opacus = PRVAccountant()
    opacus.history = [(2.0, 1.0, 100)]
    with np.errstate(divide="ignore"):  # Opacus evaluates log(1 - q) at q = 1
        theirs = opacus.get_epsilon(delta=DELTA)
    ours = gaussian_epsilon([(4.0, 100)], delta=DELTA, accountant="prv")
    exact = exact_gaussian_epsilon(2.0, 100, DELTA)
    assert ours == pytest.approx(theirs, abs=0.02)
    assert exact <= ours <= exact + 0.03  # PRV returns an upper bound within eps_error


@pytest.mark.parametrize(
    ("sigma", "releases", "accountant", "golden"),
    [
        (4.0, 100, "rdp", 35.08175401905626),
        (10.0, 1000, "rdp", 48.80169282486775),
        (20.0, 100, "rdp", 4.728507067217623),
        (4.0, 100, "prv", 33.1149),
    ],
)
def test_golden_epsilons(sigma, releases, accountant, golden):
    eps = gaussian_epsilon([(sigma, releases)], delta=DELTA, accountant=accountant)
    assert eps == pytest.approx(golden, rel=1e-4)


def test_rdp_is_a_valid_upper_bound_on_the_exact_epsilon():
    for sigma, releases in [(4.0, 100), (20.0, 100), (2.0, 1)]:
        exact = exact_gaussian_epsilon(sigma / 2, releases, DELTA)
        assert gaussian_epsilon([(sigma, releases)], delta=DELTA) >= exact


def test_k_releases_cost_the_same_as_one_with_sigma_over_sqrt_k():
    many = gaussian_epsilon([(20.0, 100)], delta=DELTA)
    one = gaussian_epsilon([(2.0, 1)], delta=DELTA)
    assert many == pytest.approx(one, rel=1e-9)


def test_no_release_costs_nothing():
    assert gaussian_epsilon([], delta=DELTA) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibrated_sigma_spends_at_most_and_close_to_target(accountant):
    sigma = calibrate_noise_multiplier(
        target_epsilon=8.0, delta=DELTA, releases=300, accountant=accountant
    )
    eps = gaussian_epsilon([(sigma, 300)], delta=DELTA, accountant=accountant)
    assert 7.95 <= eps <= 8.0


def test_unreachable_target_is_a_config_error():
    with pytest.raises(PrivacyConfigError, match="raise the target"):
        calibrate_noise_multiplier(target_epsilon=1e-9, delta=1e-12, releases=10)


# --- clipping ----------------------------------------------------------------------------------


def test_clip_scales_the_whole_dict_by_its_global_norm():
    current = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    reference = {"a": torch.tensor([0.0]), "b": torch.tensor([0.0])}
    clipped, norm_before = clip_difference(current, reference, 1.0)
    assert norm_before == pytest.approx(5.0)
    assert clipped["a"].item() == pytest.approx(0.6)
    assert clipped["b"].item() == pytest.approx(0.8)


def test_small_difference_is_not_clipped():
    reference = tensors(0)
    current = {k: v + 1e-3 for k, v in reference.items()}
    clipped, _ = clip_difference(current, reference, 10.0)
    for name in current:
        torch.testing.assert_close(clipped[name], current[name] - reference[name])


def test_mismatched_tensors_are_refused():
    with pytest.raises(ValueError, match="same tensors"):
        clip_difference({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        clip_difference({"a": torch.zeros(2)}, {"a": torch.zeros(3)}, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-4, 1e3),
    clip_norm=st.floats(1e-3, 1e2),
    sigma=st.floats(0.0, 10.0),
)
def test_release_minus_its_noise_is_within_c_of_the_reference(seed, scale, clip_norm, sigma):
    reference, current = tensors(seed), tensors(seed + 1, scale)
    released = gaussian_release(
        current,
        reference,
        clip_norm=clip_norm,
        noise_multiplier=sigma,
        generator=torch.Generator().manual_seed(seed),
    )
    # Replay the same generator to recover the noise (sorted names, float64, as documented).
    replay = torch.Generator().manual_seed(seed)
    noise = {
        k: sigma
        * clip_norm
        * torch.randn(reference[k].shape, generator=replay, dtype=torch.float64)
        for k in sorted(reference)
    }
    step = {k: released[k] - reference[k] - noise[k] for k in reference}
    assert global_norm(step) <= clip_norm * (1 + 1e-9)
    difference = minus(current, reference)
    if global_norm(difference) <= clip_norm:
        for k in step:
            torch.testing.assert_close(step[k], difference[k], rtol=1e-9, atol=1e-9 * clip_norm)


def test_zero_noise_release_is_reference_plus_clipped_difference_in_float32():
    reference, current = tensors(1, dtype=torch.float32), tensors(2, 5.0, dtype=torch.float32)
    released = gaussian_release(
        current, reference, clip_norm=0.5, noise_multiplier=0.0, generator=torch.Generator()
    )
    assert all(released[k].dtype == torch.float32 for k in released)
    assert global_norm(minus(released, reference)) == pytest.approx(0.5, rel=1e-5)


# --- noise -------------------------------------------------------------------------------------


def test_noise_has_std_sigma_times_c():
    sigma, clip_norm = 1.5, 0.2
    reference = {
        "a": torch.zeros(300, 400, dtype=torch.float64),
        "b": torch.ones(50_000, dtype=torch.float64),
    }
    current = {
        "a": torch.full((300, 400), 0.01, dtype=torch.float64),
        "b": torch.ones(50_000, dtype=torch.float64),
    }
    clipped, _ = clip_difference(current, reference, clip_norm)
    released = gaussian_release(
        current,
        reference,
        clip_norm=clip_norm,
        noise_multiplier=sigma,
        generator=torch.Generator().manual_seed(7),
    )
    noise = torch.cat([(released[k] - reference[k] - clipped[k]).flatten() for k in reference])
    assert float(noise.std()) == pytest.approx(sigma * clip_norm, rel=0.02)
    assert abs(float(noise.mean())) < 0.01 * sigma * clip_norm


def test_release_never_equals_the_raw_model():
    reference, current = tensors(3, dtype=torch.float32), tensors(4, dtype=torch.float32)
    released = gaussian_release(
        current,
        reference,
        clip_norm=1.0,
        noise_multiplier=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    for name in current:
        assert not torch.any(released[name] == current[name])


def test_mean_of_many_releases_is_the_clipped_model_not_the_raw_one():
    clip_norm = 1.0
    reference = {"w": torch.zeros(10, dtype=torch.float64)}
    current = {"w": torch.full((10,), 5.0 / math.sqrt(10), dtype=torch.float64)}  # 5 C away
    generator = torch.Generator().manual_seed(11)
    releases = torch.stack(
        [
            gaussian_release(
                current, reference, clip_norm=clip_norm, noise_multiplier=1.0, generator=generator
            )["w"]
            for _ in range(4000)
        ]
    )
    mean = releases.mean(dim=0)
    clipped, _ = clip_difference(current, reference, clip_norm)
    assert float(torch.linalg.vector_norm(mean - clipped["w"])) < 0.15
    assert float(torch.linalg.vector_norm(mean - current["w"])) > 3.5


def test_release_is_reproducible_from_the_generator_and_leaves_inputs_alone():
    reference, current = tensors(5), tensors(6)
    before = {k: v.clone() for k, v in current.items()}
    one = gaussian_release(
        current,
        reference,
        clip_norm=1.0,
        noise_multiplier=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    two = gaussian_release(
        current,
        reference,
        clip_norm=1.0,
        noise_multiplier=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    other = gaussian_release(
        current,
        reference,
        clip_norm=1.0,
        noise_multiplier=1.0,
        generator=torch.Generator().manual_seed(4),
    )
    for k in current:
        torch.testing.assert_close(one[k], two[k], rtol=0, atol=0)
        assert not torch.equal(one[k], other[k])
        torch.testing.assert_close(current[k], before[k], rtol=0, atol=0)


def test_negative_noise_is_refused():
    with pytest.raises(PrivacyConfigError):
        gaussian_release(
            tensors(0),
            tensors(1),
            clip_norm=1.0,
            noise_multiplier=-1.0,
            generator=torch.Generator(),
        )
