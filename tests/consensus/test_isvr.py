"""ECL-ISVR: golden steps, the weight from K, the K = 1 and irregular-graph questions (sec. 10).

The two open points of ECL_MATH.md are settled here with exact gradients on the convex
problems of tests/consensus: what to do at K = 1 (sec. 10.2) and whether the per-node weight
c = 1 / (s |N_i| (K - 1)) keeps the fixed point on irregular graphs (sec. 10.3).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from convex_problems import (
    consensus_residual,
    distance_to,
    least_squares_problem,
    run_events,
)

from consensus.algorithms import Algorithm, EdgeConsensusISVR, make_algorithm
from consensus.config import ConsensusConfig, ConsensusConfigError
from consensus.exchange_schedule import ExchangeSchedule
from consensus.lr_schedule import isvr_consensus_weight, step_weights
from consensus.topology import Topology, from_edges, node_names, ring

F64 = torch.float64
NODES = node_names(8)
STAR = from_edges(NODES, [("N1", n) for n in NODES[1:]])
# an irregular random graph: a path plus five random chords, degrees 2-4
IRREGULAR = from_edges(
    NODES,
    [*zip(NODES, NODES[1:], strict=False)]
    + [("N1", "N3"), ("N1", "N6"), ("N2", "N6"), ("N2", "N8"), ("N5", "N7")],
)


@functools.cache
def problem():
    return least_squares_problem(NODES)


@functools.cache
def lipschitz() -> float:
    return max(problem().lipschitz(n) for n in NODES)


def reported_finite_weight(local_steps: float, degree: int, p: int, step: float) -> float:
    """Reported to stay finite at K = 1: c = p / (s (K E + K - p E)), p = 1 PDMM, 2 ADMM."""
    return p / (step * (local_steps * degree + local_steps - p * degree))


def paper_weight(local_steps: float, degree: int, step: float) -> float:
    """The K >= 2 form of ECL_MATH.md: c = 1 / (s E (K - 1))."""
    return 1.0 / (step * degree * (local_steps - 1))


# -- golden steps ------------------------------------------------------------------------------


def two_nodes(method: str, **settings: object) -> tuple[Algorithm, Algorithm]:
    """N1 - N2, scalar w = 0, s = 0.5 (mu = 2), K = 4: eta / mu = 1/3, c = 2/3."""
    cfg = ConsensusConfig(method=method, learning_rate=0.5, isvr_local_steps=4.0, **settings)
    return tuple(
        make_algorithm(
            cfg,
            node=n,
            neighbours=[p],
            params={"w": torch.zeros(1, dtype=F64)},
            node_order=["N1", "N2"],
        )
        for n, p in (("N1", "N2"), ("N2", "N1"))
    )


def step(alg: Algorithm, target: float) -> None:
    """A local step on f(w) = (w - target)^2 / 2."""
    alg.local_step({"w": alg.params["w"] - target})


def swap(a: Algorithm, b: Algorithm) -> None:
    m_ab, m_ba = a.outgoing(b.node), b.outgoing(a.node)
    a.incoming(b.node, m_ba)
    b.incoming(a.node, m_ab)


def value(alg: Algorithm, key: str = "w") -> float:
    return alg.params["w"].item() if key == "w" else alg.outgoing(key)["y/w"].item()


def test_golden_isvr_pdmm_two_steps_and_a_swap() -> None:
    # w <- (1 - 1/K)(w - s g) + (1/K) A z = 0.75 (w - 0.5 g) + 0.25 A z (eq. 23); z(0) = 0.
    n1, n2 = two_nodes("ecl-isvr-pdmm")
    assert isinstance(n1, EdgeConsensusISVR)
    step(n1, 1.0)  # g = -1: 0.75 * 0.5 = 0.375;   y_12 = 0 - 2 * 0.375 = -0.75
    step(n2, 3.0)  # g = -3: 0.75 * 1.5 = 1.125;   y_21 = 0 + 2 * 1.125 = 2.25
    assert value(n1) == pytest.approx(0.375, abs=1e-15)
    assert value(n2) == pytest.approx(1.125, abs=1e-15)
    assert value(n1, "N2") == pytest.approx(-0.75, abs=1e-15)
    assert value(n2, "N1") == pytest.approx(2.25, abs=1e-15)
    swap(n1, n2)  # PDMM: z_12 = 2.25, z_21 = -0.75
    # N1: g = -0.625: 0.75 * 0.6875 + 0.25 * 2.25 = 1.078125;  y_12 = 2.25 - 2.15625
    # N2: g = -1.875: 0.75 * 2.0625 + 0.25 * 0.75 = 1.734375;  y_21 = -0.75 + 3.46875
    step(n1, 1.0)
    step(n2, 3.0)
    assert value(n1) == pytest.approx(1.078125, abs=1e-15)
    assert value(n2) == pytest.approx(1.734375, abs=1e-15)
    assert value(n1, "N2") == pytest.approx(0.09375, abs=1e-15)
    assert value(n2, "N1") == pytest.approx(2.71875, abs=1e-15)


def test_golden_isvr_admm_averages_the_dual() -> None:
    # ADMM, theta = 1/2: z_12 = 2.25 / 2; N1: 0.75 * 0.6875 + 0.25 * 1.125 = 0.796875
    n1, n2 = two_nodes("ecl-isvr-admm")
    step(n1, 1.0)
    step(n2, 3.0)
    swap(n1, n2)
    step(n1, 1.0)
    assert value(n1) == pytest.approx(0.796875, abs=1e-15)


def test_matched_step_makes_the_learning_rate_the_gradient_step() -> None:
    # matched_step: s = lr K / (K - 1), so with z = A w the step is w - lr g exactly.
    n1, _ = two_nodes("ecl-isvr-pdmm", matched_step=True)
    step(n1, 1.0)  # g = -1, lr = 0.5
    assert value(n1) == pytest.approx(0.5, abs=1e-15)


def test_weight_follows_k_the_lr_schedule_and_holds_k_at_two_below_two() -> None:
    assert isvr_consensus_weight(8) == pytest.approx(1 / 7)
    assert isvr_consensus_weight(2) == isvr_consensus_weight(1) == isvr_consensus_weight(1.5) == 1
    cfg = ConsensusConfig(
        method="ecl-isvr-admm",
        learning_rate=0.1,
        isvr_local_steps=8,
        lr_schedule="cosine",
        schedule_steps=10,
        min_learning_rate=0.01,
        consensus_weight=3.0,  # not used by ISVR
    )
    for k in (0, 5, 10):
        weights = step_weights(k, cfg)
        s = weights.learning_rate
        # c with one neighbour (e_ij = 1) is 1 / (s (K - 1)) at every lr of the schedule
        assert weights.consensus == pytest.approx(1 / (s * 7))
        assert weights.inverse_step_size == pytest.approx(1 / s)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"proximity_weight": 0.1}, "proximity_weight = 0"),
        ({"fan_in_scaling": True}, "fan_in_scaling = false"),
        ({"isvr_local_steps": 0.5}, "isvr_local_steps"),
        ({"isvr_local_steps": math.inf}, "isvr_local_steps"),
    ],
)
def test_config_refuses_what_isvr_does_not_have(settings: dict, message: str) -> None:
    with pytest.raises(ConsensusConfigError, match=message):
        ConsensusConfig(method="ecl-isvr-pdmm", **settings)


def test_isvr_needs_no_consensus_weight() -> None:
    ConsensusConfig(method="ecl-isvr-pdmm", consensus_weight=0.0)  # accepted, unused
    with pytest.raises(ConsensusConfigError, match="consensus_weight > 0"):
        ConsensusConfig(method="ecl-pdmm", consensus_weight=0.0)


# -- K = 1 (sec. 10.2) --------------------------------------------------------------------------


def test_reported_finite_form_disagrees_with_the_k_form_and_fails_for_admm_at_k_1() -> None:
    s = 0.1
    for degree in (1, 2, 7):
        for k in (2, 4, 8, 64):
            ratio = reported_finite_weight(k, degree, 1, s) / paper_weight(k, degree, s)
            # PDMM: smaller by E (K - 1) / (E (K - 1) + K), never equal, -> E / (E + 1)
            assert ratio == pytest.approx(degree * (k - 1) / (degree * (k - 1) + k))
            assert ratio < 1
        # at K = 1 the K form is infinite; the finite form gives PDMM c = 1 / s ...
        assert reported_finite_weight(1, degree, 1, s) == pytest.approx(1 / s)
    # ... and ADMM 2 / (s (1 - E)): negative on every graph with a node of degree >= 2
    assert reported_finite_weight(1, 2, 2, s) < 0
    with pytest.raises(ZeroDivisionError):
        reported_finite_weight(1, 1, 2, s)


def run_async(algorithms: dict[str, Algorithm], topology: Topology, steps: int) -> float:
    schedule = ExchangeSchedule(
        topology=topology, steps=steps, exchange_interval=1.0, seed=7, speed_jitter=0.3
    )
    run_events(algorithms, problem(), schedule)
    return distance_to(algorithms, problem().minimiser())


def build(cfg: ConsensusConfig, topology: Topology, weights) -> dict[str, Algorithm]:
    """One algorithm per node with `weights(node)` as its edge weights."""
    return {
        n: make_algorithm(
            cfg,
            node=n,
            neighbours=topology.neighbours(n),
            params=problem().initial_params(),
            node_order=topology.nodes,
            edge_weights=weights(n),
        )
        for n in topology.nodes
    }


@pytest.mark.parametrize("method", ["ecl-isvr-pdmm", "ecl-isvr-admm"])
def test_k_1_held_at_2_reaches_the_minimiser_with_a_swap_every_step(method: str) -> None:
    topology = ring(NODES)
    cfg = ConsensusConfig(
        method=method, learning_rate=1.0 / lipschitz(), isvr_local_steps=1, matched_step=True
    )
    assert run_async(build(cfg, topology, topology.edge_weights), topology, 400) < 1e-6


def test_finite_pdmm_form_at_k_1_keeps_the_fixed_point_too() -> None:
    # c = 1 / s: eta / mu = 1 per edge (ECL with per-edge weight 1); positive and symmetric
    # on a ring, so the fixed point is the minimiser (eq. 18) - it is the noise floor that
    # decided against it (sec. 10.2, benchmark).
    topology = ring(NODES)
    cfg = ConsensusConfig(
        method="ecl-pdmm", learning_rate=3.0 / lipschitz(), consensus_weight=1.0
    )  # gradient step s / (1 + 2) = 1 / L
    weights = lambda n: {p: 1.0 for p in topology.neighbours(n)}  # noqa: E731
    assert run_async(build(cfg, topology, weights), topology, 400) < 1e-6


# -- irregular graphs (sec. 10.3) ---------------------------------------------------------------


@pytest.mark.parametrize("topology", [STAR, IRREGULAR], ids=["star", "irregular"])
@pytest.mark.parametrize("method", ["ecl-isvr-pdmm", "ecl-isvr-admm"])
def test_per_node_weights_bias_irregular_graphs_and_symmetric_ones_do_not(
    topology: Topology, method: str
) -> None:
    # c_ij = 1 / (s |N_i| (K - 1)) differs at the two ends of an edge between nodes of
    # different degree: the models agree on the wrong point; e_ij = 1 / max(|N_i|, |N_j|)
    # (Topology.edge_weights) makes c_ij = c_ji and the fixed point the minimiser.
    cfg = ConsensusConfig(
        method=method, learning_rate=1.0 / lipschitz(), isvr_local_steps=2, matched_step=True
    )
    per_node = build(
        cfg, topology, lambda n: {p: 1.0 / topology.degree(n) for p in topology.neighbours(n)}
    )
    symmetric = build(cfg, topology, topology.edge_weights)
    biased = run_async(per_node, topology, 500)
    assert consensus_residual(per_node) < 1e-6
    assert biased > 0.1
    assert run_async(symmetric, topology, 500) < 1e-6
