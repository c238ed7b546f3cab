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


def step_weights(step: int, config: ConsensusConfig) -> StepWeights:
    """mu = 1 / lr(step), eta = consensus_weight * mu, rho = proximity_weight * mu (eq. 5).

    With `matched_step`, mu = 1 / (lr (1 + consensus_weight)): the gradient's step 1 / (mu +
    eta) is then lr, the step the SGD-based methods take.
    """
    rate = learning_rate_at(step, config)
    if rate <= 0:
        raise ValueError(
            f"learning rate at step {step} is {rate}; ECL needs lr > 0: raise min_learning_rate"
        )
    inverse = 1.0 / (rate * (1.0 + config.consensus_weight)) if config.matched_step else 1.0 / rate
    return StepWeights(
        learning_rate=rate,
        inverse_step_size=inverse,
        consensus=config.consensus_weight * inverse,
        proximity=config.proximity_weight * inverse,
    )
