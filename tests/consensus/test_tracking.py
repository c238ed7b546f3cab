"""Gradient tracking: golden swap, the tracker-mass invariant under loss, repeats and restarts."""

from __future__ import annotations

import random

import pytest
import torch
from convex_problems import build_algorithms, least_squares_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.algorithms import Algorithm, GradientTracking, make_algorithm
from consensus.config import ConsensusConfig, ConsensusConfigError
from consensus.topology import Topology, node_names, ring

F64 = torch.float64
TOPOLOGY = ring(node_names(4))
PROBLEM = least_squares_problem(TOPOLOGY.nodes, seed=5)


def two_nodes(**settings: object) -> tuple[Algorithm, Algorithm]:
    cfg = ConsensusConfig(method="gradient-tracking", learning_rate=0.5, **settings)
    return tuple(
        make_algorithm(cfg, node=n, neighbours=[p], params={"w": torch.zeros(1, dtype=F64)})
        for n, p in (("N1", "N2"), ("N2", "N1"))
    )


def step(alg: Algorithm, target: float) -> None:
    alg.local_step({"w": alg.params["w"] - target})  # f(w) = (w - target)^2 / 2


def tracker(alg: Algorithm) -> float:
    return alg.state_dict()["tensors"]["tracker/w"].item()


def test_golden_steps_and_a_complete_swap_average_model_and_tracker() -> None:
    n1, n2 = two_nodes()
    step(n1, 1.0)  # g = -1: t = -1, x = 0 - 0.5 * -1 = 0.5
    step(n2, 3.0)  # g = -3: t = -3, x = 1.5
    m12, m21 = n1.outgoing("N2"), n2.outgoing("N1")  # each hands over half its tracker
    assert (m12["t/w"].item(), m21["t/w"].item()) == (-0.5, -1.5)
    assert (m12["w/w"].item(), m21["w/w"].item()) == (0.5, 1.5)
    n1.incoming("N2", m21)
    n2.incoming("N1", m12)
    assert [a.params["w"].item() for a in (n1, n2)] == [1.0, 1.0]
    assert [tracker(a) for a in (n1, n2)] == [-2.0, -2.0]  # the mean of -1 and -3
    step(n1, 1.0)  # g = 0:  t = -2 + 0 - (-1) = -1, x = 1 + 0.5 = 1.5
    step(n2, 3.0)  # g = -2: t = -2 - 2 - (-3) = -1, x = 1.5
    assert [a.params["w"].item() for a in (n1, n2)] == [1.5, 1.5]
    assert [tracker(a) for a in (n1, n2)] == [-1.0, -1.0]  # sum = g_1 + g_2 = -2


def test_a_repeated_message_moves_no_mass_and_a_lost_one_arrives_with_the_next() -> None:
    n1, n2 = two_nodes()
    step(n1, 1.0)
    first = n1.outgoing("N2")  # lost: N1 keeps t = -0.5, -0.5 is in flight
    second = n1.outgoing("N2")  # running total -0.75
    n2.incoming("N1", second)
    n2.incoming("N1", second)  # a repeat: nothing more
    n2.incoming("N1", first)  # late and older: takes back what the total no longer owes
    n2.incoming("N1", second)
    assert tracker(n1) + tracker(n2) == pytest.approx(-1.0, abs=1e-15)


def mass_balance(algorithms: dict[str, Algorithm]) -> float:
    """sum_i t_i + mass in flight - sum_i d_prev_i: zero always (eq. 26).

    In flight on (i, j): what i has given j minus what j has taken from i (negative after i
    restarted from a checkpoint older than what j took: j gives it back at i's next message).
    """
    states = {n: a.state_dict()["tensors"] for n, a in algorithms.items()}
    total = 0.0
    for node, tensors in states.items():
        for name in ("weight", "bias"):
            total += float(tensors[f"tracker/{name}"].sum() - tensors[f"previous/{name}"].sum())
            for peer in algorithms[node].peers:
                given = tensors[f"given/{peer}/{name}"].sum()
                total += float(given - states[peer][f"taken/{node}/{name}"].sum())
    return total


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**16), momentum=st.sampled_from([0.0, 0.7]))
def test_tracker_mass_is_conserved_under_loss_delay_repeats_and_a_restart(
    seed: int, momentum: float
) -> None:
    rng = random.Random(seed)
    cfg = ConsensusConfig(method="gradient-tracking", learning_rate=0.05, momentum=momentum)
    algorithms = build_algorithms(cfg, TOPOLOGY, PROBLEM)
    mailbox: list[tuple[str, str, dict]] = []  # (sender, receiver, message), delivered at will
    saved = None
    for _ in range(120):
        node = rng.choice(TOPOLOGY.nodes)
        roll = rng.random()
        if roll < 0.4:
            alg = algorithms[node]
            alg.local_step(PROBLEM.gradient(node, alg.params))
        elif roll < 0.7:
            peer = rng.choice(TOPOLOGY.neighbours(node))
            mailbox.append((node, peer, algorithms[node].outgoing(peer)))
        elif mailbox:  # deliver any message, maybe again, maybe out of order
            sender, receiver, message = rng.choice(mailbox)
            algorithms[receiver].incoming(sender, message)
        if saved is None and roll > 0.95:
            params = {k: v.clone() for k, v in algorithms[node].params.items()}
            saved = (node, algorithms[node].state_dict(), params)
    if saved is not None:  # a node restarts from an older checkpoint
        node, state, params = saved
        algorithms[node].load_state_dict(state)
        for name, value in params.items():
            algorithms[node].params[name].copy_(value)
    assert abs(mass_balance(algorithms)) < 1e-9


def test_exchange_privacy_is_refused_with_the_reason() -> None:
    cfg = ConsensusConfig(method="gradient-tracking")
    params = {"w": torch.zeros(1, dtype=F64)}
    with pytest.raises(ConsensusConfigError, match="gradient-tracking does not support exchange"):
        make_algorithm(cfg, node="N1", neighbours=["N2"], params=params, privacy=object())
    with pytest.raises(ConsensusConfigError, match="exchange privacy"):
        GradientTracking(config=cfg, node="N1", peers=["N2"], params=params, privacy=object())


def test_a_message_with_the_wrong_tensors_is_refused() -> None:
    n1, n2 = two_nodes()
    message = n2.outgoing("N1")
    with pytest.raises(ValueError, match="missing"):
        n1.incoming("N2", {"w/w": message["w/w"]})
    with pytest.raises(ValueError, match="shape"):
        n1.incoming("N2", {"w/w": message["w/w"], "t/w": torch.zeros(2, dtype=F64)})


def ring_of(topology: Topology) -> dict[str, Algorithm]:
    return build_algorithms(ConsensusConfig(method="gradient-tracking"), topology, PROBLEM)


def test_state_dict_names_every_store() -> None:
    state = ring_of(TOPOLOGY)["N1"].state_dict()
    prefixes = {key.rsplit("/", 1)[0] for key in state["tensors"]}
    assert prefixes == {"tracker", "previous", "given/N2", "given/N4", "taken/N2", "taken/N4"}
