"""Learning-rate schedules, pure functions of the local step; ECL's weights derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from consensus.config import ConsensusConfig


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up (eq. 13): (step + 1) / warmup_steps for the first steps, then 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def cosine_learning_rate(step: int, *, peak: float, floor: float, total_steps: int) -> float:
    """Cosine decay (eq. 14) from `peak` at step 0 to `floor` at `total_steps`, then flat."""
    progress = min(max(step, 0), total_steps) / total_steps
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def cyclical_learning_rate(step: int, *, low: float, high: float, cycle_steps: int) -> float:
    """Triangular cyclical rate (eq. 15, co-learning): low -> high at half cycle -> low."""
    position = (step % cycle_steps) / cycle_steps
    return low + (high - low) * (1.0 - abs(2.0 * position - 1.0))


def learning_rate_at(step: int, config: ConsensusConfig) -> float:
    """The learning rate of local step `step` (0-based): schedule after warm-up, times warm-up."""
    after_warmup = max(step - config.warmup_steps, 0)
    if config.lr_schedule == "cosine":
        if config.schedule_steps < 1:
            raise ValueError(
                "lr_schedule='cosine' needs schedule_steps >= 1 (the length of the decay); "
                "the simulation and nodes fill it from their step budget"
            )
        rate = cosine_learning_rate(
            after_warmup,
            peak=config.learning_rate,
            floor=config.min_learning_rate,
            total_steps=config.schedule_steps,
        )
    elif config.lr_schedule == "cyclical":
        rate = cyclical_learning_rate(
            after_warmup,
            low=config.min_learning_rate,
            high=config.learning_rate,
            cycle_steps=config.cycle_steps,
        )
    else:
        rate = config.learning_rate
    return rate * warmup_factor(step, config.warmup_steps)


@dataclass(frozen=True, kw_only=True)
class StepWeights:
    """The ECL weights of one local step (eq. 5): all scale with the inverse step size.

    inverse_step_size = mu, consensus = eta, proximity = rho in docs/algorithm.md.
    """

    learning_rate: float
    inverse_step_size: float
    consensus: float
    proximity: float


def isvr_consensus_weight(local_steps: float) -> float:
    """eta / mu of ECL-ISVR (eq. 22): 1 / (K - 1) with K = max(local_steps, 2).

    With edge weights 1 / |N_i| this is the published c = 1 / (s |N_i| (K - 1)). K = 1 would
    make c infinite (w <- the mean of the duals, no gradient at all); K is held at 2 below
    that, the choice docs/algorithm.md sec. 10.2 measured against the alternatives.
    """
    return 1.0 / (max(float(local_steps), 2.0) - 1.0)


def step_weights(step: int, config: ConsensusConfig) -> StepWeights:
    """mu = 1 / lr(step), eta = kappa * mu, rho = proximity_weight * mu (eq. 5).

    kappa is `consensus_weight`, or for ECL-ISVR 1 / (K - 1) (eq. 22). With `matched_step`,
    mu = 1 / (lr (1 + kappa)): the gradient's step 1 / (mu + eta) is then lr, the step the
    SGD-based methods take.
    """
    rate = learning_rate_at(step, config)
    if rate <= 0:
        raise ValueError(
            f"learning rate at step {step} is {rate}; ECL needs lr > 0: raise min_learning_rate"
        )
    kappa = config.consensus_weight
    if config.is_isvr:
        kappa = isvr_consensus_weight(config.isvr_local_steps)
    inverse = 1.0 / (rate * (1.0 + kappa)) if config.matched_step else 1.0 / rate
    return StepWeights(
        learning_rate=rate,
        inverse_step_size=inverse,
        consensus=kappa * inverse,
        proximity=config.proximity_weight * inverse,
    )
