"""PrivacyConfig: what is protected and how much noise; imports no Opacus (quick node status)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from consensus.privacy_errors import PrivacyConfigError

__all__ = [
    "ACCOUNTANTS",
    "MODES",
    "PrivacyConfig",
    "PrivacyConfigError",
    "default_delta",
    "is_positive",
]

MODES = ("off", "exchange", "dpsgd")
ACCOUNTANTS = ("rdp", "prv")

_PLAN_NEEDED = (
    "target_epsilon in exchange mode needs planned_releases >= 1 (--planned-releases K): the "
    "number of model releases (exchanges x neighbours) the noise must cover"
)


@dataclass(frozen=True)
class PrivacyConfig:
    """What is protected and how much noise. See docs/privacy.md for the meaning of each field.

    mode: "off" | "exchange" (noise on every model release to a neighbour; the unit protected
    is the site's whole data set) | "dpsgd" (record-level DP-SGD with Opacus).
    Give either `noise_multiplier` (sigma: noise std = sigma * clip_norm) or `target_epsilon`
    (exchange: with `planned_releases`; dpsgd: over `planned_epochs` passes over the site's
    training records, or else over the configured number of training steps).
    """

    mode: str = "off"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    planned_releases: int | None = None
    clip_norm: float | None = None
    delta: float | None = None
    accountant: str = "rdp"
    epsilon_budget: float | None = None
    planned_epochs: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PrivacyConfigError(f"privacy mode {self.mode!r} is unknown; choose from {MODES}")
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyConfigError(
                f"accountant {self.accountant!r} is unknown; choose one of {ACCOUNTANTS}"
            )
        if self.mode != "off":
            self._check_noise()
            self._check_ranges()

    def _check_noise(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise PrivacyConfigError(
                f"privacy mode {self.mode!r} needs exactly one of noise_multiplier "
                "(--noise-multiplier S) or target_epsilon (--epsilon E)"
            )
        if self.noise_multiplier is not None and not is_positive(self.noise_multiplier):
            raise PrivacyConfigError(
                f"noise_multiplier must be a positive number, got {self.noise_multiplier}; "
                "with no noise there is no privacy guarantee (use mode 'off' to say so)"
            )
        if self.target_epsilon is not None and not is_positive(self.target_epsilon):
            raise PrivacyConfigError(f"target_epsilon must be positive, got {self.target_epsilon}")
        # planned_releases may stay None until the noise is calibrated: the simulation plans
        # it per node (`exchange_noise_multiplier` refuses a target without a plan).
        if self.planned_releases is not None and self.planned_releases < 1:
            raise PrivacyConfigError(_PLAN_NEEDED)

    def _check_ranges(self) -> None:
        if self.clip_norm is None or not is_positive(self.clip_norm):
            raise PrivacyConfigError(
                f"clip_norm (--clip C) must be a positive number, got {self.clip_norm}; "
                "exchange: the largest model change one release may carry; dpsgd: the "
                "per-example gradient norm bound (1.0 is common)"
            )
        if self.delta is not None and not 0 < self.delta < 1:
            raise PrivacyConfigError(f"delta must lie in (0, 1), got {self.delta}")
        exchange = self.mode == "exchange"
        if self.planned_epochs is not None and (exchange or not self.planned_epochs > 0):
            raise PrivacyConfigError(
                "planned_epochs is for mode 'dpsgd' and must be > 0 (exchange takes "
                f"planned_releases); got {self.planned_epochs} with mode {self.mode!r}"
            )
        if self.planned_releases is not None and not exchange:
            raise PrivacyConfigError(
                "planned_releases is for mode 'exchange'; dpsgd takes planned_epochs"
            )
        if self.epsilon_budget is not None:
            if self.mode != "exchange":
                raise PrivacyConfigError(
                    "epsilon_budget applies to exchange mode; for dpsgd the epsilon is fixed "
                    "by target_epsilon (or noise_multiplier) and the number of epochs"
                )
            if not is_positive(self.epsilon_budget):
                raise PrivacyConfigError(
                    f"epsilon_budget must be positive, got {self.epsilon_budget}"
                )

    @property
    def effective_epsilon_budget(self) -> float | None:
        """The exchange budget: `epsilon_budget`, else `target_epsilon`, else none (no stop)."""
        if self.mode != "exchange":
            return None
        return self.epsilon_budget if self.epsilon_budget is not None else self.target_epsilon

    def resolve_delta(self, n_records: int) -> float:
        """The configured delta, else `default_delta(n_records)`."""
        return self.delta if self.delta is not None else default_delta(n_records)

    def exchange_noise_multiplier(self, delta: float) -> float:
        """sigma for exchange mode: as configured, or calibrated to target_epsilon at `delta`."""
        if self.mode != "exchange":
            raise PrivacyConfigError(f"exchange noise asked for, but privacy mode is {self.mode!r}")
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        if self.planned_releases is None:
            raise PrivacyConfigError(_PLAN_NEEDED)
        # imported here: it loads Opacus, which `hospital-node status` must not wait for
        from consensus.privacy_calibration import calibrate_noise_multiplier

        return calibrate_noise_multiplier(
            target_epsilon=float(self.target_epsilon),
            delta=delta,
            releases=int(self.planned_releases),
            accountant=self.accountant,
        )


def is_positive(value: float) -> bool:
    """A finite number above zero (NaN and infinity are not)."""
    return math.isfinite(value) and value > 0


def default_delta(n_records: int) -> float:
    """delta = min(1e-5, 1/n): below the chance of singling out one of the site's n records."""
    if n_records < 1:
        raise PrivacyConfigError(f"default_delta needs a record count >= 1, got {n_records}")
    return min(1e-5, 1.0 / n_records)
