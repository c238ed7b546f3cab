"""Epsilon of DP-SGD: Opacus's RDP figure, the step allowance of a target, group privacy."""

from __future__ import annotations

import json
import math

import pytest
from opacus.accountants import RDPAccountant, create_accountant
from scipy.optimize import brentq
from scipy.stats import norm

from hospital_node.privacy.accounting import (
    RecordLevelPrivacy,
    group_epsilon,
    max_images_per_patient,
    steps_within,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def record_level(mechanism: str = "rdp", steps: int = 0) -> RecordLevelPrivacy:
    privacy = RecordLevelPrivacy(
        accountant=create_accountant(mechanism=mechanism),
        noise_multiplier=1.1,
        clip_norm=1.0,
        sample_rate=0.02,
        delta=1e-5,
        group_size=2,
    )
    for _ in range(steps):
        privacy.accountant.step(noise_multiplier=1.1, sample_rate=0.02)
    return privacy


def test_epsilon_is_opacus_rdp_figure_and_survives_a_json_round_trip() -> None:
    privacy = record_level(steps=12)
    opacus = RDPAccountant()
    opacus.history = [(1.1, 0.02, 12)]

    restored = record_level()
    restored.load_state_dict(json.loads(json.dumps(privacy.state_dict())))

    assert privacy.epsilon() == pytest.approx(opacus.get_epsilon(delta=1e-5), rel=1e-12)
    assert restored.epsilon() == privacy.epsilon() > 0 and restored.steps == 12
    summary = json.loads(json.dumps(privacy.summary()))
    assert summary["unit"] == "record" and "patient" in summary["caveat"]
    assert summary["patient_epsilon"] > summary["epsilon"]


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_steps_within_a_target_is_the_last_step_that_fits(mechanism: str) -> None:
    privacy = record_level(mechanism, steps=5)
    limit = steps_within(privacy, 2.0)

    def epsilon_after(total: int) -> float:
        accountant = create_accountant(mechanism=mechanism)
        accountant.history = [(1.1, 0.02, total)]
        return accountant.get_epsilon(delta=1e-5)

    assert limit > 5
    assert epsilon_after(limit) <= 2.0 < epsilon_after(limit + 1)
    assert steps_within(privacy, 1e-6) == 5  # not one more step fits


# --- patient-level (group) privacy ------------------------------------------------------------


def exact_gaussian_epsilon(opacus_multiplier: float, delta: float) -> float:
    """Tight epsilon of one Gaussian mechanism (Balle & Wang 2018), without Opacus."""
    mu = 1.0 / opacus_multiplier

    def excess(eps: float) -> float:
        return (
            norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2)) - delta
        )

    return brentq(excess, 0.0, 600.0)


def test_group_of_one_is_the_record_level_rdp_figure():
    history = [(1.0, 0.01, 1000)]
    opacus = RDPAccountant()
    opacus.history = history
    assert group_epsilon(history, group_size=1, delta=1e-5) == opacus.get_epsilon(delta=1e-5)


def test_group_epsilon_grows_with_the_group_and_matches_golden():
    history = [(1.0, 0.01, 1000)]
    by_size = [group_epsilon(history, group_size=k, delta=1e-5) for k in (1, 2, 3, 5)]
    assert by_size == sorted(by_size)
    assert by_size[1] == pytest.approx(5.149139569573663, rel=1e-3)
    assert group_epsilon(history, group_size=10, delta=1e-5) == math.inf


@pytest.mark.parametrize(("multiplier", "group"), [(4.0, 2), (8.0, 3), (20.0, 4)])
def test_group_bound_is_never_below_the_exact_group_epsilon(multiplier, group):
    # Without sampling a group of k is exactly a Gaussian with k-fold sensitivity.
    bound = group_epsilon([(multiplier, 1.0, 1)], group_size=group, delta=1e-5)
    assert bound >= exact_gaussian_epsilon(multiplier / group, 1e-5)


def test_max_images_per_patient():
    assert max_images_per_patient(["p1", "p2", "p1", "p3", "p1"]) == 3
    assert max_images_per_patient([]) == 1
