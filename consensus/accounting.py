"""Exchange-privacy accountant: counts every release to every neighbour and enforces the budget."""

from __future__ import annotations

import math
from typing import Any

from consensus.privacy_calibration import gaussian_epsilon, opacus_noise_multiplier
from consensus.privacy_config import ACCOUNTANTS, PrivacyConfig
from consensus.privacy_errors import PrivacyBudgetExhausted, PrivacyConfigError

STATE_VERSION = 1


class ExchangeAccountant:
    """Spent epsilon of one node's exchange releases (sensitivity 2C, see privacy_calibration.py).

    Every release to every neighbour counts once, whoever receives it, so the figure holds
    even if all neighbours pool what they received. Releases are kept as (sigma, count)
    segments: a restart with a different sigma appends a segment, and the spent epsilon
    never resets. Check `would_exceed()` (or call `charge()`) before releasing.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        delta: float,
        accountant: str = "rdp",
        epsilon_budget: float | None = None,
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise PrivacyConfigError(f"noise_multiplier must be positive, got {noise_multiplier}")
        if not 0 < delta < 1:
            raise PrivacyConfigError(f"delta must lie in (0, 1), got {delta}")
        if accountant not in ACCOUNTANTS:
            raise PrivacyConfigError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.accountant = accountant
        self.epsilon_budget = None if epsilon_budget is None else float(epsilon_budget)
        self._segments: list[tuple[float, int]] = []
        self._per_peer: dict[str, int] = {}
        self._cache: dict[tuple[tuple[float, int], ...], float] = {}
        first = self._epsilon_of(self._with_more(1))
        if self.epsilon_budget is not None and first > self.epsilon_budget:
            raise PrivacyConfigError(
                f"one release at noise_multiplier={noise_multiplier} already costs epsilon="
                f"{first:.3g} > epsilon_budget={epsilon_budget}; raise the noise or the budget"
            )

    @classmethod
    def from_config(cls, config: PrivacyConfig, *, n_records: int) -> ExchangeAccountant:
        """The accountant for an exchange-mode config; delta defaults to min(1e-5, 1/n_records)."""
        delta = config.resolve_delta(n_records)
        return cls(
            noise_multiplier=config.exchange_noise_multiplier(delta),
            delta=delta,
            accountant=config.accountant,
            epsilon_budget=config.effective_epsilon_budget,
        )

    @property
    def releases(self) -> int:
        """Releases made so far, over all neighbours and all runs."""
        return sum(count for _, count in self._segments)

    @property
    def releases_per_peer(self) -> dict[str, int]:
        return dict(self._per_peer)

    def _with_more(self, n: int) -> tuple[tuple[float, int], ...]:
        segments = list(self._segments)
        if n > 0:
            if segments and segments[-1][0] == self.noise_multiplier:
                segments[-1] = (self.noise_multiplier, segments[-1][1] + n)
            else:
                segments.append((self.noise_multiplier, n))
        return tuple(segments)

    def _epsilon_of(self, segments: tuple[tuple[float, int], ...]) -> float:
        if segments not in self._cache:
            self._cache[segments] = gaussian_epsilon(
                segments, delta=self.delta, accountant=self.accountant
            )
        return self._cache[segments]

    def epsilon(self) -> float:
        """Spent epsilon at `delta` (0 before the first release)."""
        return self._epsilon_of(tuple(self._segments))

    def epsilon_after(self, n: int = 1) -> float:
        """The epsilon that would be spent after `n` more releases at the current sigma."""
        if n < 0:
            raise ValueError(f"number of releases must be >= 0, got {n}")
        return self._epsilon_of(self._with_more(n))

    def would_exceed(self, n: int = 1) -> bool:
        """True if `n` more releases would take the spent epsilon over the budget."""
        if self.epsilon_budget is None:
            return False
        return self.epsilon_after(n) > self.epsilon_budget

    @property
    def exhausted(self) -> bool:
        """True once the next release would exceed the budget: the node must stop sending."""
        return self.would_exceed(1)

    def record_release(self, peer: str) -> None:
        """Count one release to `peer` (no budget check; use `charge` before releasing)."""
        self._segments = list(self._with_more(1))
        self._per_peer[str(peer)] = self._per_peer.get(str(peer), 0) + 1
        current = tuple(self._segments)  # keep the cache small: only today's figure survives
        self._cache = {current: self._cache[current]} if current in self._cache else {}

    def charge(self, peer: str) -> None:
        """Count one release to `peer`, or raise PrivacyBudgetExhausted if it would not fit."""
        if self.would_exceed(1):
            raise PrivacyBudgetExhausted(
                f"privacy budget spent: epsilon={self.epsilon():.3f} of {self.epsilon_budget} "
                f"(delta={self.delta:g}) after {self.releases} releases; one more would make "
                f"{self.epsilon_after(1):.3f}. This node stops sending to its neighbours and "
                "keeps training and receiving. Only an operator can raise epsilon_budget, "
                "which weakens the guarantee; never reset the accountant."
            )
        self.record_release(peer)

    def summary(self) -> dict[str, Any]:
        """JSON-able figures for logs, the results store and the app."""
        return {
            "mode": "exchange",
            "unit": "site",
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "exhausted": self.exhausted,
            "releases": self.releases,
            "noise_multiplier": self.noise_multiplier,
            "opacus_noise_multiplier": opacus_noise_multiplier(self.noise_multiplier),
            "accountant": self.accountant,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; `load_state_dict` restores the same spent epsilon."""
        return {
            "version": STATE_VERSION,
            "segments": [[sigma, count] for sigma, count in self._segments],
            "releases_per_peer": dict(sorted(self._per_peer.items())),
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "accountant": self.accountant,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore past releases. This run's sigma, delta, accountant and budget stay in force;
        past releases keep the sigma they were made with."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"accountant state version {state.get('version')!r} is not supported")
        segments = [(float(sigma), int(count)) for sigma, count in state["segments"]]
        per_peer = {str(peer): int(count) for peer, count in state["releases_per_peer"].items()}
        if any(not (math.isfinite(s) and s > 0) or k < 0 for s, k in segments):
            raise ValueError(f"accountant state has invalid segments {segments}")
        if min(per_peer.values(), default=0) < 0:
            raise ValueError(f"accountant state has negative release counts {per_peer}")
        if sum(k for _, k in segments) != sum(per_peer.values()):
            raise ValueError("accountant state is inconsistent: segment and per-peer counts differ")
        self._segments = [(s, k) for s, k in segments if k > 0]
        self._per_peer = per_peer
