"""Under gradient noise: where ECL-ISVR and gradient tracking beat plain ECL and gossip (sec. 10.6).

The setting of benchmarks/bench_ecl_noise.py, shortened to 600 steps and one seed: the convex
least-squares ring, every method at the same gradient step 0.3/L, Gaussian noise of 0.3 x
the mean gradient norm. ECL-ISVR's K is the exchange interval. Every config sees the same
events and the same noise draws, so the comparisons are paired. What holds (and what does
not, asserted as measured so that the docs cannot drift from it):
- K = 2: ISVR-ADMM below plain ECL (ADMM and PDMM) and gossip (the benchmark: also at
  K = 1, held at 2); ISVR-PDMM ties plain ECL-PDMM (within 2 % either way, not asserted);
- K = 8: ISVR below gossip, but above plain ECL with the same dual update; its gain there is
  speed with exact gradients, not the noise floor;
- gradient tracking below gossip at interval 2 (the benchmark: at 1 too, not at 8);
  momentum tracking (b = 0.9, same effective step) below it and below ECL without momentum.
At noise 1 (benchmark only) gossip is below ISVR-PDMM at every interval, and below
ISVR-ADMM at interval 1.
"""

from __future__ import annotations

import functools

import pytest
from convex_problems import build_algorithms, distance_to, floor_mse, least_squares_problem
from convex_problems import run_events as run_exact

from consensus.config import ConsensusConfig
from consensus.exchange_schedule import ExchangeSchedule
from consensus.topology import node_names, ring

PROBLEM = least_squares_problem(node_names(8))
LIPSCHITZ = max(PROBLEM.lipschitz(n) for n in PROBLEM.nodes)
STEP = 0.3  # x 1/L, the gradient step of every method


def config(method: str, interval: float, momentum: float = 0.0) -> ConsensusConfig:
    """Same gradient step for all: matched_step for ECL; lr (1 - b) with momentum b."""
    return ConsensusConfig(
        method=method,
        learning_rate=STEP / LIPSCHITZ * (1 - momentum),
        matched_step=True,
        isvr_local_steps=interval,
        momentum=momentum,
    )


@functools.cache
def floor(method: str, interval: float, momentum: float = 0.0) -> float:
    return floor_mse(
        PROBLEM,
        config(method, interval, momentum),
        noise=0.3,
        steps=600,
        exchange_interval=interval,
        seed=0,
    )


def test_isvr_admm_is_below_plain_ecl_and_gossip_at_k_2() -> None:
    isvr = floor("ecl-isvr-admm", 2.0)
    assert isvr < floor("ecl-admm", 2.0)
    assert isvr < floor("ecl-pdmm", 2.0)
    assert isvr < floor("gossip", 2.0)


@pytest.mark.parametrize("method", ["ecl-isvr-pdmm", "ecl-isvr-admm"])
def test_isvr_is_below_gossip_at_k_8(method: str) -> None:
    assert floor(method, 8.0) < floor("gossip", 8.0)


@pytest.mark.parametrize("dual", ["pdmm", "admm"])
def test_at_k_8_isvr_trades_noise_floor_for_speed(dual: str) -> None:
    # noise: its weight 1 / (K - 1) = 1/7 is below plain ECL's 0.5, and the floor is higher
    assert floor(f"ecl-isvr-{dual}", 8.0) > floor(f"ecl-{dual}", 8.0)
    # exact gradients: closer to the minimiser than plain ECL after the same 600 steps
    assert exact_distance(f"ecl-isvr-{dual}", 8.0) < 0.5 * exact_distance(f"ecl-{dual}", 8.0)


def exact_distance(method: str, interval: float) -> float:
    topology = ring(PROBLEM.nodes)
    algorithms = build_algorithms(config(method, interval), topology, PROBLEM)
    schedule = ExchangeSchedule(
        topology=topology, steps=600, exchange_interval=interval, seed=0, speed_jitter=0.3
    )
    run_exact(algorithms, PROBLEM, schedule)
    return distance_to(algorithms, PROBLEM.minimiser())


def test_gradient_tracking_is_below_gossip_and_momentum_tracking_lower_still() -> None:
    tracking = floor("gradient-tracking", 2.0)
    assert tracking < floor("gossip", 2.0)
    momentum = floor("gradient-tracking", 2.0, momentum=0.9)
    assert momentum < tracking
    assert momentum < min(floor(m, 2.0) for m in ("ecl-pdmm", "ecl-isvr-admm"))
