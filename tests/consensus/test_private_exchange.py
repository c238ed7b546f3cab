"""Exchange privacy inside the algorithms: releases, charging, exhaustion, restart, convergence."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from convex_problems import (
    DTYPE,
    direct_swap,
    distance_to,
    least_squares_problem,
    run_events,
)

from consensus.accounting import ExchangeAccountant
from consensus.algorithms import SERVER, Algorithm, make_algorithm
from consensus.config import ConsensusConfig
from consensus.exchange_schedule import ExchangeSchedule, Step, Swap
from consensus.privacy import PrivacyBudgetExhausted, gaussian_epsilon, gaussian_release
from consensus.private_exchange import ExchangePrivacy
from consensus.topology import Topology, node_names, ring
from consensus.transport.memory import InMemoryTransport

DELTA = 1e-5
RING = ring(node_names(8))
PROBLEM = least_squares_problem(RING.nodes)
LEARNING_RATE = 2.0 / max(PROBLEM.lipschitz(n) for n in RING.nodes)


@pytest.fixture(autouse=True)
def _quiet_opacus():
    with warnings.catch_warnings():  # "optimal order is the smallest alpha" at tiny sigma
        warnings.simplefilter("ignore", UserWarning)
        yield


def privacy(
    peers,
    *,
    sigma: float = 0.5,
    clip: float = 1.0,
    budget: float | None = None,
    seed: int = 0,
    checkpoint_generator: bool = False,
) -> ExchangePrivacy:
    accountant = ExchangeAccountant(noise_multiplier=sigma, delta=DELTA, epsilon_budget=budget)
    return ExchangePrivacy(
        peers=peers,
        initial=PROBLEM.initial_params(),
        clip_norm=clip,
        accountant=accountant,
        generator=torch.Generator().manual_seed(seed),
        checkpoint_generator=checkpoint_generator,
    )


def node(
    method: str = "ecl-pdmm",
    *,
    name: str = "N2",
    topology: Topology = RING,
    rho: float = 0.0,
    private: ExchangePrivacy | None = None,
) -> Algorithm:
    config = ConsensusConfig(method=method, learning_rate=LEARNING_RATE, proximity_weight=rho)
    return make_algorithm(
        config,
        node=name,
        neighbours=topology.neighbours(name),
        params=PROBLEM.initial_params(),
        node_order=topology.nodes,
        edge_weights=topology.edge_weights(name),
        num_samples=20,
        privacy=private,
    )


def trained(algorithm: Algorithm, steps: int = 3) -> Algorithm:
    for _ in range(steps):
        algorithm.local_step(PROBLEM.gradient(algorithm.node, algorithm.params))
    return algorithm


def global_norm(tensors) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors.values()))


def strip(message: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.split("/", 1)[1]: v for k, v in message.items() if k.startswith(prefix + "/")}


# --- the release and the message built from it ------------------------------------------------
def test_ecl_dual_is_formed_from_the_release_never_from_the_model() -> None:
    plain = trained(node(rho=0.5))
    private = trained(node(rho=0.5, private=privacy(RING.neighbours("N2"), clip=0.3)))
    w = {k: v.clone() for k, v in private.params.items()}

    for peer in RING.neighbours("N2"):
        sign = 1.0 if RING.nodes.index("N2") < RING.nodes.index(peer) else -1.0
        message = private.outgoing(peer)
        released = strip(message, "w")  # rho > 0: the model part is the same release
        expected_y = {
            k: y - 2 * sign * (released[k] - w[k])
            for k, y in strip(plain.outgoing(peer), "y").items()
        }
        for k, y in strip(message, "y").items():
            torch.testing.assert_close(y, expected_y[k], rtol=0, atol=1e-12)
        assert global_norm({k: released[k] - w[k] for k in w}) > 1e-3  # the model did not leave
    assert private.privacy.accountant.releases == 2  # one per message, rho does not charge twice


@pytest.mark.parametrize("method", ["ecl-isvr-pdmm", "ecl-isvr-admm"])
def test_isvr_dual_is_formed_from_the_release_as_for_ecl(method: str) -> None:
    plain = trained(node(method))
    private = trained(node(method, private=privacy(RING.neighbours("N2"), seed=3)))
    released = gaussian_release(
        private.params,
        PROBLEM.initial_params(),
        clip_norm=1.0,
        noise_multiplier=0.5,
        generator=torch.Generator().manual_seed(3),
    )
    message = private.outgoing("N1")  # A_21 = -1: y_21 = z_21 + 2 released
    assert set(message) == {"y/weight", "y/bias"}  # rho = 0: no model part
    for k, y in strip(plain.outgoing("N1"), "y").items():
        expected = y + 2 * (released[k] - private.params[k])
        torch.testing.assert_close(message[f"y/{k}"], expected, rtol=0, atol=1e-12)
    assert private.privacy.accountant.releases == 1


def test_release_is_reference_plus_clipped_step_plus_the_generators_noise() -> None:
    sigma, clip = 0.2, 0.05
    peers = RING.neighbours("N2")
    private = trained(node(rho=0.5, private=privacy(peers, sigma=sigma, clip=clip, seed=7)))
    replay = torch.Generator().manual_seed(7)
    reference = PROBLEM.initial_params()

    for _ in range(3):  # the reference of each release is the previous release on the edge
        noise = {
            name: sigma * clip * torch.randn(reference[name].shape, generator=replay, dtype=DTYPE)
            for name in sorted(reference)
        }
        released = strip(private.outgoing("N3"), "w")
        step = {k: released[k] - reference[k] - noise[k] for k in reference}
        wanted = {k: private.params[k] - reference[k] for k in reference}
        assert global_norm(step) <= clip * (1 + 1e-9)  # the clipping bound
        if global_norm(wanted) > clip:  # clipped along the model change
            scale = clip / global_norm(wanted)
            for k in step:
                torch.testing.assert_close(step[k], scale * wanted[k], rtol=1e-9, atol=1e-12)
        reference = released


def test_gossip_and_fedavg_send_the_release() -> None:
    gossip = trained(node("gossip", private=privacy(RING.neighbours("N2"), seed=3)))
    fedavg = trained(node("fedavg", private=privacy([SERVER], seed=3)))
    for algorithm, peer in ((gossip, "N1"), (fedavg, SERVER)):
        expected = gaussian_release(
            algorithm.params,
            PROBLEM.initial_params(),
            clip_norm=1.0,
            noise_multiplier=0.5,
            generator=torch.Generator().manual_seed(3),
        )
        message = algorithm.outgoing(peer)
        for k, v in expected.items():
            torch.testing.assert_close(message[f"w/{k}"], v, rtol=0, atol=0)
    assert int(fedavg.outgoing(SERVER)["num_samples"]) == 20


def test_local_only_takes_no_privacy_and_peers_must_match() -> None:
    with pytest.raises(ValueError, match="sends nothing"):
        node("local", private=privacy(RING.neighbours("N2")))
    with pytest.raises(ValueError, match="peers"):
        node(private=privacy(["N1", "N5"]))


# --- accounting ----------------------------------------------------------------------------
def test_each_release_to_each_neighbour_is_charged_once() -> None:
    topology = Topology(
        nodes=("N1", "N2", "N3", "N4"), edges=(("N1", "N2"), ("N1", "N3"), ("N1", "N4"))
    )
    hub = trained(node(name="N1", topology=topology, rho=0.5, private=privacy(["N2", "N3", "N4"])))

    for _ in range(2):
        for peer in ("N2", "N3", "N4"):
            hub.outgoing(peer)

    accountant = hub.privacy.accountant
    assert accountant.releases == 6
    assert accountant.releases_per_peer == {"N2": 2, "N3": 2, "N4": 2}
    assert accountant.epsilon() == pytest.approx(gaussian_epsilon([(0.5, 6)], delta=DELTA))


# --- budget: stop sending, keep stepping and receiving, survive a restart ----------------------
def two_node_run(budget_releases: int) -> tuple[dict[str, Algorithm], InMemoryTransport]:
    topology = ring(node_names(3))
    budget = gaussian_epsilon([(0.5, budget_releases)], delta=DELTA)
    private = privacy(topology.neighbours("N1"), budget=budget)
    algorithms = {
        "N1": node(name="N1", topology=topology, private=private),
        "N2": node(name="N2", topology=topology),
        "N3": node(name="N3", topology=topology),
    }
    transport = InMemoryTransport()
    for name, algorithm in algorithms.items():
        transport.register(algorithm, peers=topology.neighbours(name))
    return algorithms, transport


def bytes_from(transport: InMemoryTransport, sender: str) -> int:
    return sum(link.bytes_sent for link in transport.stats().links if link.sender == sender)


def test_spent_budget_stops_sending_but_not_stepping_or_receiving() -> None:
    algorithms, transport = two_node_run(budget_releases=3)
    events = [Step("N1"), Step("N2"), Step("N3"), Swap("N1", "N2", False, False)] * 4

    run_events(algorithms, PROBLEM, events, swap=lambda a, b, *_: transport.swap(a.node, b.node))
    sent_at_exhaustion = bytes_from(transport, "N1")
    dual_before = algorithms["N1"].state_dict()["tensors"]["dual/N2/weight"]
    algorithms["N2"].local_step(PROBLEM.gradient("N2", algorithms["N2"].params))
    result = transport.swap("N2", "N1")
    algorithms["N1"].local_step(PROBLEM.gradient("N1", algorithms["N1"].params))

    assert algorithms["N1"].privacy.exhausted and algorithms["N1"].privacy.accountant.releases == 3
    assert bytes_from(transport, "N1") == sent_at_exhaustion  # no more bytes from N1
    assert result.ba.withheld and not result.ba.delivered and result.ab.delivered
    stats = {(x.sender, x.receiver): x for x in transport.stats().links}
    assert stats[("N1", "N2")].messages_sent == 3 and stats[("N1", "N2")].messages_withheld == 2
    assert stats[("N2", "N1")].messages_delivered == 5  # N1 still receives
    assert not torch.equal(algorithms["N1"].state_dict()["tensors"]["dual/N2/weight"], dual_before)
    assert algorithms["N1"].step == 5  # and still trains


def test_exhaustion_survives_a_restart_through_the_state_dict() -> None:
    algorithms, transport = two_node_run(budget_releases=2)
    for _ in range(3):
        transport.swap("N1", "N2")
    state = algorithms["N1"].state_dict()
    meta = json.loads(json.dumps(state["meta"]))  # the accountant is JSON, as checkpoints need
    topology = ring(node_names(3))
    budget = gaussian_epsilon([(0.5, 2)], delta=DELTA)
    restarted = node(
        name="N1", topology=topology, private=privacy(topology.neighbours("N1"), budget=budget)
    )

    restarted.load_state_dict({"tensors": state["tensors"], "meta": meta})

    assert restarted.privacy.exhausted
    assert restarted.privacy.epsilon() == algorithms["N1"].privacy.epsilon() == budget
    with pytest.raises(PrivacyBudgetExhausted):
        restarted.outgoing("N2")
    with pytest.raises(ValueError, match="privacy"):  # a restart cannot drop the privacy mode
        node(name="N1", topology=topology).load_state_dict(state)


def test_references_round_trip_and_the_generator_only_on_request() -> None:
    peers = RING.neighbours("N2")
    first = trained(node(private=privacy(peers, seed=1)))
    first.outgoing("N1")
    state = first.state_dict()
    assert "privacy/generator" not in state["tensors"]  # a real node reseeds from the OS
    source = trained(node(private=privacy(peers, seed=1, checkpoint_generator=True)))
    source.outgoing("N1")
    copy = trained(node(private=privacy(peers, seed=99, checkpoint_generator=True)))

    copy.load_state_dict(source.state_dict())

    assert copy.privacy.accountant.releases == 1
    torch.testing.assert_close(copy.outgoing("N1"), source.outgoing("N1"), rtol=0, atol=0)


# --- convergence with tiny noise ---------------------------------------------------------------
def private_ring_error(sigma: float) -> float:
    algorithms = {
        name: node(name=name, private=privacy(RING.neighbours(name), sigma=sigma, seed=k))
        for k, name in enumerate(RING.nodes)
    }
    schedule = ExchangeSchedule(topology=RING, steps=250, exchange_interval=2.0, seed=3)
    run_events(algorithms, PROBLEM, schedule, swap=direct_swap)
    return distance_to(algorithms, PROBLEM.minimiser())


def test_ecl_with_tiny_exchange_noise_reaches_the_minimiser_with_error_growing_with_sigma() -> None:
    small, larger = private_ring_error(1e-6), private_ring_error(1e-4)

    assert small < 1e-4
    assert 10 * small < larger < 1e-2
