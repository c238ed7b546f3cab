"""Learning-rate schedules (docs/algorithm.md eqs. 13-15) and ECL weights derived from them."""

from __future__ import annotations

import pytest

from consensus.config import ConsensusConfig
from consensus.lr_schedule import learning_rate_at, step_weights


def test_constant_with_linear_warmup() -> None:
    cfg = ConsensusConfig(learning_rate=0.4, warmup_steps=4)
    rates = [learning_rate_at(s, cfg) for s in range(6)]
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])


def test_cosine_decays_from_peak_to_floor_then_stays() -> None:
    cfg = ConsensusConfig(
        learning_rate=1.0, lr_schedule="cosine", schedule_steps=10, min_learning_rate=0.1
    )
    rates = [learning_rate_at(s, cfg) for s in (0, 5, 10, 50)]
    assert rates == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_cyclical_is_a_triangle_between_min_and_peak() -> None:
    cfg = ConsensusConfig(
        method="fedavg",
        learning_rate=0.5,
        lr_schedule="cyclical",
        cycle_steps=4,
        min_learning_rate=0.1,
    )
    rates = [learning_rate_at(s, cfg) for s in range(9)]
    assert rates == pytest.approx([0.1, 0.3, 0.5, 0.3, 0.1, 0.3, 0.5, 0.3, 0.1])


def test_ecl_weights_scale_with_the_inverse_step_size() -> None:
    cfg = ConsensusConfig(
        learning_rate=0.5,
        consensus_weight=2.0,
        proximity_weight=0.5,
        lr_schedule="cosine",
        schedule_steps=4,
        min_learning_rate=0.25,
    )
    first, last = step_weights(0, cfg), step_weights(4, cfg)
    assert (first.inverse_step_size, first.consensus, first.proximity) == (2.0, 4.0, 1.0)
    assert (last.inverse_step_size, last.consensus, last.proximity) == (4.0, 8.0, 2.0)
    # the ratio eta / mu, i.e. the local-vs-consensus balance, is the same at every step
    assert first.consensus / first.inverse_step_size == last.consensus / last.inverse_step_size


@pytest.mark.parametrize("consensus_weight", [0.25, 0.5, 2.0])
def test_matched_step_makes_the_gradient_step_the_learning_rate(consensus_weight: float) -> None:
    paper = step_weights(0, ConsensusConfig(learning_rate=0.1, consensus_weight=consensus_weight))
    matched = step_weights(
        0,
        ConsensusConfig(learning_rate=0.1, consensus_weight=consensus_weight, matched_step=True),
    )
    assert paper.inverse_step_size == pytest.approx(10.0)  # the paper's mu = 1 / lr
    assert 1 / (paper.inverse_step_size + paper.consensus) < 0.1  # a smaller gradient step
    assert 1 / (matched.inverse_step_size + matched.consensus) == pytest.approx(0.1)
    assert matched.consensus / matched.inverse_step_size == pytest.approx(consensus_weight)
