"""Epsilon of record-level DP-SGD: Opacus RDP/PRV accountants, cached RDP, group privacy."""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from opacus.accountants import IAccountant, RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis

from consensus.privacy_config import PrivacyConfigError

STATE_VERSION = 1
_SMALLEST_LOG_DELTA = -690.0  # exp(-690) ~ 1e-300, near the smallest positive float


def max_images_per_patient(patient_ids: Iterable[str]) -> int:
    """The group size for patient-level privacy: most training images any one patient has."""
    counts = Counter(patient_ids)
    return max(counts.values(), default=1)


@functools.lru_cache(maxsize=64)
def _step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one sampled Gaussian step at Opacus's default orders (read-only, cached).

    Opacus's `compute_rdp(steps=k)` is exactly k times this vector, and evaluating it takes
    about 0.3 s (fractional orders), so a node that shows its epsilon every few seconds
    computes it once per (noise multiplier, sample rate) instead of at every call.
    """
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders
    )
    rdp.setflags(write=False)
    return rdp


def history_rdp(history: Iterable[tuple[float, float, int]]) -> np.ndarray:
    """RDP at Opacus's default orders of a history of (noise multiplier, sample rate, steps);
    the same numbers as RDPAccountant, which sums compute_rdp(steps=k) = k x one step."""
    return sum(_step_rdp(float(nm), float(q)) * int(k) for nm, q, k in history)


def rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    """epsilon at `delta` from RDP values at Opacus's default orders (Opacus's conversion)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
        orders = RDPAccountant.DEFAULT_ALPHAS
        return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def _rdp_curve(history: list[tuple[float, float, int]]) -> Callable[[float], float]:
    """delta -> record-level epsilon by Opacus's RDP analysis (RDP computed once)."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = history_rdp(history)

    def epsilon(delta: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
            return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])

    return epsilon


def group_epsilon(
    history: list[tuple[float, float, int]], *, group_size: int, delta: float
) -> float:
    """Epsilon at `delta` for a group of `group_size` records (e.g. one patient's images).

    Group privacy: an (e, d)-DP mechanism is (k e, k exp((k-1) e) d)-DP for data sets that
    differ in k records. The record-level curve e(d_r) holds for every d_r, so we pick the
    largest d_r with k exp((k-1) e(d_r)) d_r <= delta (bisection on log(1/d_r); the left side
    is concave in it) and return k e(d_r). Uses Opacus's RDP curve (valid whatever accountant
    the headline figure uses). Returns inf when no d_r above 1e-300 fits.
    """
    if group_size < 1:
        raise PrivacyConfigError(f"group_size must be >= 1, got {group_size}")
    if not history:
        return 0.0
    curve = _rdp_curve(history)
    if group_size == 1:
        return curve(delta)
    k = group_size

    def excess(log_inv_delta_r: float) -> tuple[float, float]:
        eps_r = curve(math.exp(-log_inv_delta_r))
        return math.log(k) + (k - 1) * eps_r - log_inv_delta_r - math.log(delta), eps_r

    infeasible = math.log(k / delta)  # there excess = (k-1) e > 0
    step, feasible = 1.0, None
    while feasible is None and infeasible + step <= -_SMALLEST_LOG_DELTA:
        if excess(infeasible + step)[0] <= 0:
            feasible = infeasible + step
        else:
            infeasible, step = infeasible + step, step * 2
    if feasible is None:
        return math.inf
    for _ in range(40):
        middle = (infeasible + feasible) / 2
        if excess(middle)[0] <= 0:
            feasible = middle
        else:
            infeasible = middle
    return k * excess(feasible)[1]


class RecordLevelPrivacy:
    """Epsilon of DP-SGD so far (Opacus's accountant, advanced by every optimizer step).

    The unit is one training record (one image). A patient with up to `group_size` images
    is covered by the weaker group-privacy figure `patient_epsilon()`.
    """

    def __init__(
        self,
        *,
        accountant: IAccountant,
        noise_multiplier: float,
        clip_norm: float,
        sample_rate: float,
        delta: float,
        group_size: int = 1,
    ) -> None:
        if group_size < 1:
            raise PrivacyConfigError(f"group_size must be >= 1, got {group_size}")
        self.accountant = accountant
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.group_size = int(group_size)

    @property
    def steps(self) -> int:
        return sum(int(steps) for _, _, steps in self.accountant.history)

    def epsilon(self) -> float:
        """Record-level epsilon at `delta` spent so far (RDP: Opacus's figure, from cached
        per-step RDP; PRV: Opacus's accountant)."""
        if not self.accountant.history:
            return 0.0
        if self.accountant.mechanism() == "rdp":
            return rdp_epsilon(history_rdp(self.accountant.history), self.delta)
        return float(self.accountant.get_epsilon(delta=self.delta))

    def patient_epsilon(self) -> float:
        """Epsilon at `delta` for one patient with up to `group_size` images (group privacy)."""
        return group_epsilon(self.accountant.history, group_size=self.group_size, delta=self.delta)

    def summary(self) -> dict[str, Any]:
        """JSON-able figures and the caveat, for logs, the results store and the app."""
        return {
            "mode": "dpsgd",
            "unit": "record",
            "epsilon": self.epsilon(),
            "patient_epsilon": self.patient_epsilon(),
            "group_size": self.group_size,
            "delta": self.delta,
            "steps": self.steps,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sample_rate": self.sample_rate,
            "accountant": self.accountant.mechanism(),
            "caveat": (
                "epsilon protects one image; a patient with several images is protected by "
                f"patient_epsilon (group of {self.group_size} images)"
            ),
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: Opacus's history of (noise multiplier, sample rate, steps)."""
        return {
            "version": STATE_VERSION,
            "mechanism": self.accountant.mechanism(),
            "history": [[float(nm), float(q), int(k)] for nm, q, k in self.accountant.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the steps already taken, so the spent epsilon carries over a restart."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"DP-SGD state version {state.get('version')!r} is not supported")
        history = [(float(nm), float(q), int(k)) for nm, q, k in state["history"]]
        if any(nm <= 0 or not 0 < q <= 1 or k < 0 for nm, q, k in history):
            raise ValueError(f"DP-SGD state has an invalid history {history}")
        # Histories are mechanism-agnostic (sampled Gaussian steps); either accountant bounds them.
        self.accountant.history = history


_MAX_EXTRA_STEPS = 1 << 40  # search bound for the DP-SGD step allowance


def steps_within(privacy: RecordLevelPrivacy, target_epsilon: float) -> int:
    """Total DP-SGD steps (taken + more at the same noise and rate) whose epsilon stays within
    `target_epsilon`; the steps already taken if not even one more fits."""
    mechanism = privacy.accountant.mechanism()
    history = list(privacy.accountant.history)
    step = (privacy.noise_multiplier, privacy.sample_rate)
    if mechanism == "rdp":  # RDP adds up: k more steps add k x one step's RDP
        spent, one = history_rdp(history), history_rdp([(*step, 1)])

        def fits(extra: int) -> bool:
            return rdp_epsilon(spent + extra * one, privacy.delta) <= target_epsilon

    else:

        def fits(extra: int) -> bool:
            accountant = create_accountant(mechanism=mechanism)
            accountant.history = [*history, (*step, extra)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return accountant.get_epsilon(delta=privacy.delta) <= target_epsilon

    if not fits(1):
        return privacy.steps
    low, high = 1, 2  # fits(low) holds; search for a high that does not
    while high < _MAX_EXTRA_STEPS and fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return privacy.steps + low
