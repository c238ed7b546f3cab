"""The results store's privacy row of one hospital, from its exchange or DP-SGD accountant."""

from __future__ import annotations

import warnings

from consensus.private_exchange import ExchangePrivacy
from hospital_node.privacy.accounting import RecordLevelPrivacy
from hospital_node.store.schema import PrivacyStatus


def exchange_status(privacy: ExchangePrivacy) -> PrivacyStatus:
    """The store's row for one node's exchange privacy."""
    accountant = privacy.accountant
    return PrivacyStatus(
        mode="exchange",
        epsilon=accountant.epsilon(),
        delta=accountant.delta,
        releases=accountant.releases,
        exhausted=accountant.exhausted,
        accountant=accountant.accountant,
        budget=accountant.epsilon_budget,
        noise_multiplier=accountant.noise_multiplier,
        clip=privacy.clip_norm,
    )


def record_level_status(
    privacy: RecordLevelPrivacy, *, budget: float | None = None, exhausted: bool = False
) -> PrivacyStatus:
    """The store's row for one node's DP-SGD: record-level epsilon and steps so far."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus: "optimal order is largest"
        epsilon = privacy.epsilon()
    return PrivacyStatus(
        mode="dpsgd",
        epsilon=epsilon,
        delta=privacy.delta,
        releases=privacy.steps,
        exhausted=exhausted,
        accountant=privacy.accountant.mechanism(),
        budget=budget,
        noise_multiplier=privacy.noise_multiplier,
        clip=privacy.clip_norm,
    )
