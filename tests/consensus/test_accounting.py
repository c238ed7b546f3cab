"""Tests of ExchangeAccountant: Opacus figures, composition over peers, budget, restart."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant

from consensus.accounting import ExchangeAccountant
from consensus.privacy import (
    PrivacyBudgetExhausted,
    PrivacyConfig,
    PrivacyConfigError,
    gaussian_epsilon,
)

DELTA = 1e-5


def test_fresh_accountant_has_spent_nothing():
    accountant = ExchangeAccountant(noise_multiplier=4.0, delta=DELTA)
    assert accountant.epsilon() == 0.0
    assert accountant.releases == 0
    assert not accountant.exhausted


def test_epsilon_equals_opacus_with_half_sigma_per_release():
    accountant = ExchangeAccountant(noise_multiplier=4.0, delta=DELTA)
    opacus = RDPAccountant()
    for _ in range(100):
        accountant.record_release("N2")
        opacus.step(noise_multiplier=2.0, sample_rate=1.0)
    assert accountant.epsilon() == opacus.get_epsilon(delta=DELTA)
    assert accountant.epsilon() == pytest.approx(35.08175401905626, rel=1e-9)


def test_releases_to_several_neighbours_each_count_once():
    spread = ExchangeAccountant(noise_multiplier=6.0, delta=DELTA)
    single = ExchangeAccountant(noise_multiplier=6.0, delta=DELTA)
    for _ in range(10):
        for peer in ("N1", "N3", "N4"):
            spread.record_release(peer)
    for _ in range(30):
        single.record_release("N1")
    assert spread.releases == 30
    assert spread.releases_per_peer == {"N1": 10, "N3": 10, "N4": 10}
    assert spread.epsilon() == single.epsilon()


def test_charge_stops_exactly_at_the_budget():
    budget = gaussian_epsilon([(5.0, 5)], delta=DELTA)
    accountant = ExchangeAccountant(noise_multiplier=5.0, delta=DELTA, epsilon_budget=budget)
    for i in range(5):
        assert not accountant.would_exceed(5 - i)
        assert accountant.would_exceed(6 - i)
        accountant.charge("N2")
    assert accountant.exhausted
    with pytest.raises(PrivacyBudgetExhausted, match="stops sending"):
        accountant.charge("N2")
    assert accountant.releases == 5
    assert accountant.epsilon() <= budget


def test_budget_smaller_than_one_release_is_a_config_error():
    with pytest.raises(PrivacyConfigError, match="raise the noise or the budget"):
        ExchangeAccountant(noise_multiplier=1.0, delta=DELTA, epsilon_budget=0.1)


def test_no_budget_never_exhausts():
    accountant = ExchangeAccountant(noise_multiplier=1.0, delta=DELTA)
    for _ in range(50):
        accountant.charge("N2")
    assert not accountant.would_exceed(10**6)


def test_state_dict_round_trip_through_json_keeps_epsilon_and_exhaustion():
    budget = gaussian_epsilon([(5.0, 4)], delta=DELTA)
    before = ExchangeAccountant(noise_multiplier=5.0, delta=DELTA, epsilon_budget=budget)
    for peer in ("N1", "N3", "N1", "N3"):
        before.charge(peer)
    state = json.loads(json.dumps(before.state_dict()))
    after = ExchangeAccountant(noise_multiplier=5.0, delta=DELTA, epsilon_budget=budget)
    after.load_state_dict(state)
    assert after.epsilon() == before.epsilon()
    assert after.exhausted and before.exhausted
    assert after.releases_per_peer == {"N1": 2, "N3": 2}
    with pytest.raises(PrivacyBudgetExhausted):
        after.charge("N1")


def test_restart_with_other_sigma_keeps_past_releases_at_their_sigma():
    first = ExchangeAccountant(noise_multiplier=5.0, delta=DELTA)
    for _ in range(20):
        first.record_release("N2")
    second = ExchangeAccountant(noise_multiplier=8.0, delta=DELTA)
    second.load_state_dict(first.state_dict())
    assert second.epsilon() == first.epsilon()
    for _ in range(10):
        second.record_release("N2")
    expected = gaussian_epsilon([(5.0, 20), (8.0, 10)], delta=DELTA)
    assert second.epsilon() == pytest.approx(expected, rel=1e-12)
    assert second.epsilon() > first.epsilon()


def test_corrupt_state_is_refused():
    accountant = ExchangeAccountant(noise_multiplier=5.0, delta=DELTA)
    accountant.record_release("N2")
    state = accountant.state_dict()
    with pytest.raises(ValueError, match="inconsistent"):
        accountant.load_state_dict({**state, "releases_per_peer": {"N2": 0}})
    with pytest.raises(ValueError, match="version"):
        accountant.load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="invalid segments"):
        accountant.load_state_dict({**state, "segments": [[-1.0, 1]]})


def test_from_target_config_fits_the_planned_releases_then_stops():
    config = PrivacyConfig(mode="exchange", target_epsilon=8.0, planned_releases=60, clip_norm=1.0)
    accountant = ExchangeAccountant.from_config(config, n_records=20_000)
    assert accountant.delta == 1e-5
    assert accountant.epsilon_budget == 8.0
    for _ in range(60):
        accountant.charge("N2")
    assert 7.95 <= accountant.epsilon() <= 8.0
    with pytest.raises(PrivacyBudgetExhausted):
        for _ in range(5):
            accountant.charge("N2")


def test_prv_accountant_matches_the_prv_figure():
    accountant = ExchangeAccountant(noise_multiplier=4.0, delta=DELTA, accountant="prv")
    for _ in range(100):
        accountant.record_release("N2")
    assert accountant.epsilon() == pytest.approx(33.1149, rel=1e-4)
    assert accountant.epsilon() < gaussian_epsilon([(4.0, 100)], delta=DELTA)  # tighter than RDP


def test_summary_is_json_and_names_the_site_as_the_unit():
    accountant = ExchangeAccountant(noise_multiplier=4.0, delta=DELTA, epsilon_budget=50.0)
    accountant.charge("N2")
    summary = json.loads(json.dumps(accountant.summary()))
    assert summary["unit"] == "site"
    assert summary["opacus_noise_multiplier"] == 2.0
    assert summary["releases"] == 1
