"""Epsilon of exchange releases and the noise that meets a target, with Opacus's accountants."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from consensus.privacy_errors import PrivacyConfigError

# A clipped release moves by at most 2C when the site's data change (see `opacus_noise_multiplier`).
EXCHANGE_SENSITIVITY_FACTOR = 2.0

# Opacus's default RDP orders span 1.1..63; without sampling (q = 1) the best order for large
# noise is higher (and for tiny noise lower), so we add both tails. Extra orders can only
# tighten the bound; for typical noise the optimum is interior and the figure is exactly
# Opacus's default one.
EXCHANGE_RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 100 for x in range(1, 10))
    + tuple(RDPAccountant.DEFAULT_ALPHAS)
    + tuple(float(round(64 * 1.25**i)) for i in range(1, 60))
)


def opacus_noise_multiplier(noise_multiplier: float) -> float:
    """Opacus's noise multiplier (noise std / L2 sensitivity) of one exchange release: sigma / 2.

    A release is r + clip(w - r, C) + N(0, sigma^2 C^2 I), where r (the reference) is the
    previous release on the same edge, or the common public initial model. r is a function
    of earlier releases only, i.e. public post-processing, so each release is a Gaussian
    mechanism conditioned on r, and the sequence is an adaptive composition. For any two
    data sets of the site, whatever models w, w' they lead to, both clip(w - r, C) and
    clip(w' - r, C) lie in the ball of radius C around 0, so they differ by at most 2C:
    L2 sensitivity 2C, noise std sigma*C, hence Opacus's ratio sigma*C / 2C = sigma / 2.
    """
    return noise_multiplier / EXCHANGE_SENSITIVITY_FACTOR


def noise_multiplier_from_opacus(opacus_multiplier: float) -> float:
    """Inverse of `opacus_noise_multiplier`: sigma = 2 * Opacus's noise multiplier."""
    return opacus_multiplier * EXCHANGE_SENSITIVITY_FACTOR


def gaussian_epsilon(
    segments: Sequence[tuple[float, int]], *, delta: float, accountant: str = "rdp"
) -> float:
    """epsilon at `delta` of releases with noise multiplier sigma, as (sigma, count) segments.

    Each release is one Gaussian mechanism (sample rate 1, Opacus noise multiplier sigma/2),
    composed by Opacus's RDP or PRV accountant. PRV cost grows with the number of steps; for
    PRV we pass the exactly equivalent single Gaussian: k Gaussian mechanisms with ratios
    s_1..s_k compose to one with ratio (sum_i s_i^-2)^-1/2 (Dong, Roth, Su 2019, Gaussian DP).
    """
    history = [(opacus_noise_multiplier(s), 1.0, int(k)) for s, k in segments if k > 0]
    if not history:
        return 0.0
    opacus_accountant = create_accountant(mechanism=accountant)
    if accountant == "prv":
        mu_squared = sum(k / nm**2 for nm, _, k in history)
        opacus_accountant.history = [(1.0 / math.sqrt(mu_squared), 1.0, 1)]
        # q = 1 makes Opacus evaluate log(1 - q) = -inf; harmless, silenced here only.
        with np.errstate(divide="ignore"):
            return float(opacus_accountant.get_epsilon(delta=delta))
    opacus_accountant.history = history
    epsilon = float(opacus_accountant.get_epsilon(delta=delta, alphas=list(EXCHANGE_RDP_ORDERS)))
    # With huge noise the RDP conversion at high orders dips a hair below 0; (0, delta) holds.
    return max(0.0, epsilon)


def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, releases: int, accountant: str = "rdp"
) -> float:
    """The smallest sigma (Opacus's binary search, tolerance 0.01) whose epsilon after
    `releases` releases is <= target_epsilon; converted from Opacus's multiplier by x2."""
    if releases < 1:
        raise PrivacyConfigError(f"planned releases must be >= 1, got {releases}")
    # PRV: calibrate the single equivalent Gaussian (see gaussian_epsilon), scale by sqrt(k).
    steps, scale = (1, math.sqrt(releases)) if accountant == "prv" else (releases, 1.0)
    extra = {} if accountant == "prv" else {"alphas": list(EXCHANGE_RDP_ORDERS)}
    try:
        with np.errstate(divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # RDP "optimal order is the largest"
            opacus_multiplier = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=1.0,
                steps=steps,
                accountant=accountant,
                **extra,
            )
    except ValueError as error:
        raise PrivacyConfigError(
            f"target_epsilon={target_epsilon} over {releases} releases needs more noise than "
            f"Opacus will search ({error}); raise the target or plan fewer releases"
        ) from error
    sigma = noise_multiplier_from_opacus(opacus_multiplier * scale)
    # Rounding in the sqrt(k) rescaling must not tip the planned releases over the target.
    for _ in range(100):
        spent = gaussian_epsilon([(sigma, releases)], delta=delta, accountant=accountant)
        if spent <= target_epsilon:
            return sigma
        sigma *= 1 + 1e-6
    raise PrivacyConfigError(f"could not calibrate sigma for target_epsilon={target_epsilon}")
