"""In-memory transport: ECL converges through real wire bytes; counts; rejections change nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from convex_problems import (
    build_algorithms,
    direct_swap,
    distance_to,
    least_squares_problem,
    run_events,
)

from consensus.algorithms import SERVER, Algorithm, FedAvgServer
from consensus.config import ConsensusConfig
from consensus.exchange_schedule import ExchangeSchedule, Round, Step, Swap
from consensus.topology import node_names, ring
from consensus.transport.memory import InMemoryTransport
from consensus.wire import EPOCH_SHIFT, Message, MessageHeader, decode_message, encode_message

TOPOLOGY = ring(node_names(8))
PROBLEM = least_squares_problem(TOPOLOGY.nodes)
# 2 / L: the consensus terms keep the step stable; converges in ~2000 swaps (a fast test).
LEARNING_RATE = 2.0 / max(PROBLEM.lipschitz(n) for n in TOPOLOGY.nodes)


def _ecl(method: str = "ecl-pdmm") -> dict[str, Algorithm]:
    config = ConsensusConfig(method=method, learning_rate=LEARNING_RATE)
    return build_algorithms(config, TOPOLOGY, PROBLEM)


def _transport(algorithms: dict[str, Algorithm], *, boot_epoch: int = 0) -> InMemoryTransport:
    transport = InMemoryTransport(boot_epoch=boot_epoch)
    for node, algorithm in algorithms.items():
        transport.register(algorithm, peers=TOPOLOGY.neighbours(node))
    return transport


def _state(algorithm: Algorithm) -> dict[str, torch.Tensor]:
    return {
        **algorithm.state_dict()["tensors"],
        **{f"param/{k}": v.clone() for k, v in algorithm.params.items()},
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wired_swap(transport: InMemoryTransport) -> Callable[[Algorithm, Algorithm, bool, bool], None]:
    def swap(a: Algorithm, b: Algorithm, lost_ab: bool, lost_ba: bool) -> None:
        transport.swap(a.node, b.node, lost_ab=lost_ab, lost_ba=lost_ba)

    return swap


def test_ecl_pdmm_on_an_8_node_ring_converges_through_the_wire_with_losses() -> None:
    schedule = ExchangeSchedule(
        topology=TOPOLOGY, steps=500, exchange_interval=2.0, seed=3, loss_probability=0.1
    )
    swaps = [e for e in schedule if isinstance(e, Swap)]
    algorithms = _ecl()
    # Boot epoch 1: every sequence has 10 digits, so every message has the same size.
    transport = _transport(algorithms, boot_epoch=1)

    run_events(algorithms, PROBLEM, schedule, swap=_wired_swap(transport))

    assert distance_to(algorithms, PROBLEM.minimiser()) < 1e-6
    stats = transport.stats()
    lost = sum(s.lost_ab + s.lost_ba for s in swaps)
    assert stats.messages_sent == 2 * len(swaps)
    assert stats.messages_delivered == stats.messages_sent - lost > 0
    assert sum(link.messages_lost for link in stats.links) == lost
    assert sum(stats.rejections.values()) == 0
    assert len(stats.links) == 2 * len(TOPOLOGY.edges)
    schema = algorithms["N1"].wire_schema()
    header = MessageHeader(
        sender="N1",
        receiver="N2",
        method="ecl-pdmm",
        schema_hash=schema.digest,
        sequence=1 << EPOCH_SHIFT,
    )
    size = len(encode_message(Message(header=header, tensors=algorithms["N1"].outgoing("N2"))))
    assert schema.num_bytes < size < schema.num_bytes + 1024
    assert stats.bytes_sent == stats.messages_sent * size


@pytest.mark.parametrize(
    "method", ["ecl-pdmm", "ecl-admm", "ecl-isvr-pdmm", "ecl-isvr-admm", "gradient-tracking"]
)
def test_the_wire_is_lossless_bit_for_bit_the_direct_run(method: str) -> None:
    schedule = ExchangeSchedule(
        topology=TOPOLOGY, steps=60, exchange_interval=1.0, seed=5, loss_probability=0.2
    )
    wired, direct = _ecl(method), _ecl(method)

    run_events(wired, PROBLEM, schedule, swap=_wired_swap(_transport(wired)))
    run_events(direct, PROBLEM, schedule, swap=direct_swap)

    assert all(_same(_state(wired[n]), _state(direct[n])) for n in TOPOLOGY.nodes)


def _warm(algorithms: dict[str, Algorithm], steps: int = 5) -> InMemoryTransport:
    transport = _transport(algorithms)
    for _ in range(steps):
        transport.swap("N1", "N2")
        for node, algorithm in algorithms.items():
            algorithm.local_step(PROBLEM.gradient(node, algorithm.params))
    return transport


def _poisoned(data: bytes) -> bytes:
    message = decode_message(data)
    tensors = {k: v.clone() for k, v in message.tensors.items()}
    next(iter(tensors.values())).view(-1)[0] = float("nan")
    return encode_message(Message(header=message.header, tensors=tensors))


def test_rejected_messages_leave_the_receiving_algorithm_untouched() -> None:
    algorithms = _ecl()
    transport = _warm(algorithms)
    receiver = algorithms["N2"]
    data = transport.send("N1", "N2")
    before = _state(receiver)

    results = [
        transport.deliver("N1", "N2", _poisoned(data)),
        transport.deliver("N3", "N2", data),  # the channel says N3, the header says N1
        transport.deliver("N1", "N2", data[:-1]),
    ]

    assert [r.rejected for r in results] == ["non_finite", "unknown_sender", "malformed"]
    assert _same(_state(receiver), before)
    accepted = transport.deliver("N1", "N2", data)
    assert accepted.delivered
    after = _state(receiver)
    assert not _same(after, before)
    assert transport.deliver("N1", "N2", data).rejected == "replayed"
    assert _same(_state(receiver), after)
    assert transport.gate("N2").rejections["replayed"] == 1
    link = next(s for s in transport.stats().links if (s.sender, s.receiver) == ("N1", "N2"))
    assert link.rejections == {"non_finite": 1, "malformed": 1, "replayed": 1}


def test_a_lost_message_changes_only_the_sender_side() -> None:
    algorithms = _ecl()
    transport = _warm(algorithms)
    before = {n: _state(algorithms[n]) for n in ("N1", "N2")}

    result = transport.swap("N1", "N2", lost_ab=True)

    assert result.ab.lost and not result.ab.delivered and result.ba.delivered
    assert _same(_state(algorithms["N2"]), before["N2"])
    assert not _same(_state(algorithms["N1"]), before["N1"])


def test_fedavg_rounds_through_the_wire_match_direct_rounds() -> None:
    config = ConsensusConfig(method="fedavg", learning_rate=LEARNING_RATE)
    schedule = ExchangeSchedule(
        topology=TOPOLOGY, steps=20, exchange_interval=5, seed=1, rounds=True
    )
    wired, direct = (
        build_algorithms(config, TOPOLOGY, PROBLEM),
        build_algorithms(config, TOPOLOGY, PROBLEM),
    )
    transport = InMemoryTransport()
    for algorithm in wired.values():
        transport.register(algorithm, peers=[SERVER])
    server = FedAvgServer(clients=TOPOLOGY.nodes)

    for event in schedule:
        if isinstance(event, Step):
            wired[event.node].local_step(PROBLEM.gradient(event.node, wired[event.node].params))
        elif isinstance(event, Round):
            deliveries = transport.broadcast_round(server, TOPOLOGY.nodes)
            assert len(deliveries) == 16 and all(d.delivered for d in deliveries)
    run_events(direct, PROBLEM, schedule)

    assert all(_same(_state(wired[n]), _state(direct[n])) for n in TOPOLOGY.nodes)
    assert transport.stats().messages_sent == 4 * 2 * len(TOPOLOGY.nodes)


def test_a_restored_transport_continues_exactly_where_the_checkpoint_stood() -> None:
    schedule = list(
        ExchangeSchedule(
            topology=TOPOLOGY, steps=30, exchange_interval=1.0, seed=2, loss_probability=0.2
        )
    )
    half = len(schedule) // 2
    straight = _ecl()
    straight_transport = _transport(straight)
    run_events(straight, PROBLEM, schedule, swap=_wired_swap(straight_transport))

    first = _ecl()
    first_transport = _transport(first)
    run_events(first, PROBLEM, schedule[:half], swap=_wired_swap(first_transport))
    saved = json.loads(json.dumps(first_transport.state_dict()))
    resumed = _ecl()
    for node, algorithm in resumed.items():
        algorithm.load_state_dict(first[node].state_dict())
        with torch.no_grad():
            for name, value in algorithm.params.items():
                value.copy_(first[node].params[name])
    resumed_transport = _transport(resumed)
    resumed_transport.load_state_dict(saved)
    run_events(resumed, PROBLEM, schedule[half:], swap=_wired_swap(resumed_transport))

    assert all(_same(_state(resumed[n]), _state(straight[n])) for n in TOPOLOGY.nodes)
    assert resumed_transport.stats() == straight_transport.stats()
    replay = first_transport.send("N1", "N2")  # a message sent before the checkpoint was taken
    assert resumed_transport.deliver("N1", "N2", replay).rejected in ("replayed", "stale")


def test_fedavg_server_state_is_restored_when_it_joins() -> None:
    config = ConsensusConfig(method="fedavg", learning_rate=LEARNING_RATE)
    server = FedAvgServer(clients=TOPOLOGY.nodes)
    transports = []
    for _ in range(3):
        transport = InMemoryTransport()
        for algorithm in build_algorithms(config, TOPOLOGY, PROBLEM).values():
            transport.register(algorithm, peers=[SERVER])
        transports.append(transport)
    original, restored, probe = transports
    original.broadcast_round(server, TOPOLOGY.nodes)  # the server saw sequence 0 from each

    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    restored.register_server(server, schema=restored.gate("N1").schema)
    replay = probe.send("N1", SERVER)  # sequence 0 again

    assert restored.deliver("N1", SERVER, replay).rejected == "replayed"
    assert all(d.delivered for d in restored.broadcast_round(server, TOPOLOGY.nodes))
    assert restored.gate(SERVER).state_dict()["last_sequence"]["N1"] == 1


def test_registration_errors_say_what_to_do() -> None:
    algorithms = _ecl()
    transport = _transport(algorithms)

    with pytest.raises(ValueError, match="already registered"):
        transport.register(algorithms["N1"], peers=["N2"])
    with pytest.raises(KeyError, match="register"):
        transport.swap("N1", "N9")
