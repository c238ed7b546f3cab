"""Node-level algorithm objects: golden PDMM/ADMM steps, messages, in-place params, resume."""

from __future__ import annotations

import json

import pytest
import torch
from convex_problems import build_algorithms, fedavg_round, least_squares_problem, run_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from consensus.algorithms import (
    SERVER,
    Algorithm,
    FedAvgServer,
    UnknownPeerError,
    make_algorithm,
)
from consensus.config import METHODS, ConsensusConfig, ConsensusConfigError
from consensus.exchange_schedule import ExchangeSchedule
from consensus.topology import node_names, ring

F64 = torch.float64


def scalar(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([value], dtype=F64)}


def two_nodes(method: str, **config: object) -> tuple[Algorithm, Algorithm]:
    """N1 - N2, scalar model w = 0, lr = 0.5 (mu = 2), consensus_weight = 1 (eta = 2)."""
    cfg = ConsensusConfig(method=method, learning_rate=0.5, consensus_weight=1.0, **config)
    return tuple(
        make_algorithm(cfg, node=n, neighbours=[p], params=scalar(0.0), node_order=["N1", "N2"])
        for n, p in (("N1", "N2"), ("N2", "N1"))
    )


def swap(a: Algorithm, b: Algorithm) -> None:
    m_ab, m_ba = a.outgoing(b.node), b.outgoing(a.node)
    a.incoming(b.node, m_ba)
    b.incoming(a.node, m_ab)


def grad(target: float, alg: Algorithm) -> dict[str, torch.Tensor]:
    """f(w) = (w - target)^2 / 2."""
    return {"w": alg.params["w"] - target}


def test_golden_pdmm_two_steps_and_a_swap() -> None:
    # f_1 = (w - 1)^2 / 2, f_2 = (w - 3)^2 / 2; one neighbour each: edge weight 1, c = eta = 2;
    # A_12 = +1, A_21 = -1; denominator mu + c = 4.
    n1, n2 = two_nodes("ecl-pdmm")
    # step N1: g = -1,  w1 = (2*0 + 1 + 2*(+1)*0) / 4 = 0.25,  y_12 = 0 - 2*(+1)*0.25 = -0.5
    # step N2: g = -3,  w2 = (2*0 + 3 + 2*(-1)*0) / 4 = 0.75,  y_21 = 0 - 2*(-1)*0.75 = +1.5
    n1.local_step(grad(1.0, n1))
    n2.local_step(grad(3.0, n2))
    assert (n1.params["w"].item(), n2.params["w"].item()) == (0.25, 0.75)
    assert n1.outgoing("N2")["y/w"].item() == -0.5
    assert n2.outgoing("N1")["y/w"].item() == 1.5
    # swap: z_12 = y_21 = 1.5, z_21 = y_12 = -0.5
    swap(n1, n2)
    # step N1: g = -0.75, w1 = (0.5 + 0.75 + 2*(+1)*1.5) / 4 = 1.0625, y_12 = 1.5 - 2.125
    # step N2: g = -2.25, w2 = (1.5 + 2.25 + 2*(-1)*(-0.5)) / 4 = 1.1875, y_21 = -0.5 + 2.375
    n1.local_step(grad(1.0, n1))
    n2.local_step(grad(3.0, n2))
    assert (n1.params["w"].item(), n2.params["w"].item()) == (1.0625, 1.1875)
    assert n1.outgoing("N2")["y/w"].item() == -0.625
    assert n2.outgoing("N1")["y/w"].item() == 1.875


def test_golden_admm_dual_is_the_average() -> None:
    # Same first steps; ADMM with theta = 1/2: z_12 = (0 + 1.5) / 2, z_21 = (0 - 0.5) / 2.
    # step N1: g = -0.75, w1 = (0.5 + 0.75 + 2*(+1)*0.75) / 4 = 0.6875
    n1, n2 = two_nodes("ecl-admm")
    n1.local_step(grad(1.0, n1))
    n2.local_step(grad(3.0, n2))
    swap(n1, n2)
    n1.local_step(grad(1.0, n1))
    assert n1.params["w"].item() == 0.6875
    assert n1.state_dict()["tensors"]["dual/N2/w"].item() == 0.75
    assert n2.state_dict()["tensors"]["dual/N1/w"].item() == -0.25


def test_golden_proximity_term_uses_the_received_model() -> None:
    # proximity_weight = 0.5 -> rho = 1. After the first steps and a swap (w2_recv = 0.75):
    # w1 = (0.5 + 0.75 + 2*1.5 + 1*0.75) / (2 + 2 + 1) = 5 / 5 = 1
    n1, n2 = two_nodes("ecl-pdmm", proximity_weight=0.5)
    n1.local_step(grad(1.0, n1))
    n2.local_step(grad(3.0, n2))
    assert set(n1.outgoing("N2")) == {"y/w", "w/w"}
    swap(n1, n2)
    n1.local_step(grad(1.0, n1))
    assert n1.params["w"].item() == 1.0


def test_two_nodes_converge_to_the_global_minimiser() -> None:
    # argmin (w - 1)^2 / 2 + (w - 3)^2 / 2 = 2, whatever the skew between the two nodes.
    n1, n2 = two_nodes("ecl-pdmm")
    for _ in range(200):
        n1.local_step(grad(1.0, n1))
        n2.local_step(grad(3.0, n2))
        swap(n1, n2)
    assert n1.params["w"].item() == pytest.approx(2.0, abs=1e-12)
    assert n2.params["w"].item() == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize(
    ("method", "extra", "names"),
    [
        ("ecl-pdmm", {}, {"y/bias", "y/weight"}),
        ("ecl-admm", {"proximity_weight": 0.1}, {"y/bias", "y/weight", "w/bias", "w/weight"}),
        ("ecl-isvr-pdmm", {}, {"y/bias", "y/weight"}),
        ("ecl-isvr-admm", {"momentum": 0.9}, {"y/bias", "y/weight"}),
        ("gossip", {}, {"w/bias", "w/weight"}),
        ("gradient-tracking", {}, {"w/bias", "w/weight", "t/bias", "t/weight"}),
        ("fedavg", {}, {"w/bias", "w/weight", "num_samples"}),
        ("local", {}, set()),
    ],
)
def test_outgoing_messages_match_the_wire_schema(method: str, extra: dict, names: set) -> None:
    topology = ring(node_names(3))
    problem = least_squares_problem(topology.nodes)
    algorithms = build_algorithms(ConsensusConfig(method=method, **extra), topology, problem)
    alg = algorithms["N1"]
    peer = SERVER if method == "fedavg" else "N2"
    message = alg.outgoing(peer)
    schema = alg.wire_schema()
    assert set(message) == names == set(schema.by_name())
    assert schema.method == method
    for name, tensor in message.items():
        assert tuple(tensor.shape) == schema.by_name()[name].shape
    assert isinstance(alg, Algorithm)


def test_messages_from_unknown_peers_or_with_wrong_tensors_are_refused() -> None:
    n1, _ = two_nodes("ecl-pdmm")
    with pytest.raises(UnknownPeerError):
        n1.outgoing("N9")
    with pytest.raises(UnknownPeerError):
        n1.incoming("N9", {"y/w": torch.zeros(1, dtype=F64)})
    with pytest.raises(ValueError, match="missing"):
        n1.incoming("N2", {"w/w": torch.zeros(1, dtype=F64)})
    with pytest.raises(ValueError, match="shape"):
        n1.incoming("N2", {"y/w": torch.zeros(2, dtype=F64)})
    with pytest.raises(ValueError, match="gradients"):
        n1.local_step({"other": torch.zeros(1, dtype=F64)})


def test_params_are_updated_in_place_as_views_into_a_stacked_batch() -> None:
    stacked = torch.zeros(2, 3, dtype=F64)  # two nodes' models in one tensor
    cfg = ConsensusConfig(method="ecl-pdmm", learning_rate=0.5)
    views = [{"w": stacked[k]} for k in range(2)]
    algs = [
        make_algorithm(cfg, node=n, neighbours=[p], params=views[k])
        for k, (n, p) in enumerate((("N1", "N2"), ("N2", "N1")))
    ]
    algs[0].local_step({"w": torch.ones(3, dtype=F64)})
    algs[1].local_step({"w": -torch.ones(3, dtype=F64)})
    swap(algs[0], algs[1])
    assert algs[0].params["w"] is views[0]["w"]
    assert torch.equal(stacked[0], algs[0].params["w"]) and stacked[0].abs().sum() > 0
    assert torch.equal(stacked[1], -stacked[0])


def test_leaf_parameters_requiring_grad_are_updated() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    alg = make_algorithm(
        ConsensusConfig(method="gossip", learning_rate=0.5),
        node="N1",
        neighbours=["N2"],
        params={"weight": weight},
    )
    alg.local_step({"weight": torch.ones(2)})
    alg.incoming("N2", {"w/weight": torch.ones(2)})
    assert weight.tolist() == [0.25, 0.25]  # (-0.5 + 1) / 2


def test_fedavg_server_weights_clients_by_sample_count() -> None:
    cfg = ConsensusConfig(method="fedavg", learning_rate=1.0)
    clients = {
        "N1": make_algorithm(cfg, node="N1", neighbours=[], params=scalar(1.0), num_samples=10),
        "N2": make_algorithm(cfg, node="N2", neighbours=[], params=scalar(5.0), num_samples=30),
    }
    fedavg_round(clients)
    # (10 * 1 + 30 * 5) / 40 = 4
    assert [c.params["w"].item() for c in clients.values()] == [4.0, 4.0]
    server = FedAvgServer(clients=["N1"])
    with pytest.raises(UnknownPeerError):
        server.aggregate({"N2": clients["N2"].outgoing(SERVER)})
    with pytest.raises(ValueError, match="num_samples"):
        make_algorithm(cfg, node="N1", neighbours=[], params=scalar(1.0))


def test_fedavg_with_one_local_step_per_round_is_centralized_gradient_descent() -> None:
    topology = ring(node_names(4))
    problem = least_squares_problem(topology.nodes)
    cfg = ConsensusConfig(method="fedavg", learning_rate=0.01)
    algorithms = build_algorithms(cfg, topology, problem)
    schedule = ExchangeSchedule(
        topology=topology, steps=20, exchange_interval=1, seed=0, rounds=True
    )
    run_events(algorithms, problem, schedule)
    theta = torch.zeros(problem.dim + 1, dtype=F64)
    for _ in range(20):  # equal sample counts: the average of the local gradient steps
        theta = theta - 0.01 * sum(problem.flat_gradient(n, theta) for n in topology.nodes) / 4
    for alg in algorithms.values():
        got = torch.cat([alg.params["weight"].reshape(-1), alg.params["bias"]])
        assert (got - theta).abs().max().item() < 1e-12  # (assert_close imports ~2 s of torch)


def roundtrip(state: dict) -> dict:
    """Through safetensors bytes and JSON text, the way checkpoints are written."""
    tensors = load_safetensors(save_safetensors(state["tensors"])) if state["tensors"] else {}
    return {"tensors": tensors, "meta": json.loads(json.dumps(state["meta"]))}


def snapshot(algorithms: dict[str, Algorithm]) -> dict[str, torch.Tensor]:
    out = {}
    for node, alg in algorithms.items():
        out.update({f"{node}/param/{k}": v.clone() for k, v in alg.params.items()})
        out.update({f"{node}/{k}": v for k, v in alg.state_dict()["tensors"].items()})
    return out


RESUME_TOPOLOGY = ring(node_names(3))
RESUME_PROBLEM = least_squares_problem(RESUME_TOPOLOGY.nodes, seed=3)
RESUME_CONFIGS = {
    "ecl-pdmm": {"proximity_weight": 0.2, "fan_in_scaling": True},
    "ecl-admm": {"lr_schedule": "cosine", "schedule_steps": 30, "min_learning_rate": 0.001},
    "ecl-isvr-pdmm": {"isvr_local_steps": 4.0, "momentum": 0.5, "weight_decay": 0.01},
    "ecl-isvr-admm": {
        "lr_schedule": "cosine",
        "schedule_steps": 30,
        "min_learning_rate": 0.001,
        "matched_step": True,
    },
    "gossip": {"weight_decay": 0.01, "warmup_steps": 5},
    "gradient-tracking": {"momentum": 0.9, "weight_decay": 0.01},
    "fedavg": {"lr_schedule": "cyclical", "cycle_steps": 4, "min_learning_rate": 0.001},
    "local": {"momentum": 0.9},
}


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    split=st.integers(min_value=0, max_value=60),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_state_dict_resumes_bit_identically(method: str, split: int, seed: int) -> None:
    cfg = ConsensusConfig(method=method, learning_rate=0.02, **RESUME_CONFIGS[method])
    fedavg = method == "fedavg"
    events = list(
        ExchangeSchedule(
            topology=RESUME_TOPOLOGY,
            steps=25,
            exchange_interval=3 if fedavg else 1.5,
            seed=seed,
            loss_probability=0.0 if fedavg else 0.2,
            rounds=fedavg,
        )
    )
    first = build_algorithms(cfg, RESUME_TOPOLOGY, RESUME_PROBLEM)
    run_events(first, RESUME_PROBLEM, events[:split])
    saved = {n: roundtrip(a.state_dict()) for n, a in first.items()}
    saved_params = {n: {k: v.clone() for k, v in a.params.items()} for n, a in first.items()}
    run_events(first, RESUME_PROBLEM, events[split:])

    resumed = build_algorithms(cfg, RESUME_TOPOLOGY, RESUME_PROBLEM)
    for node, alg in resumed.items():
        for name, value in saved_params[node].items():
            alg.params[name].copy_(value)
        alg.load_state_dict(saved[node])
    run_events(resumed, RESUME_PROBLEM, events[split:])

    expected, got = snapshot(first), snapshot(resumed)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    assert [a.step for a in first.values()] == [a.step for a in resumed.values()]


def test_load_state_dict_refuses_a_state_from_another_node_or_method() -> None:
    n1, n2 = two_nodes("ecl-pdmm")
    with pytest.raises(ValueError, match="node"):
        n1.load_state_dict(n2.state_dict())
    gossip, _ = two_nodes("gossip")
    with pytest.raises(ValueError, match="method"):
        gossip.load_state_dict(n1.state_dict())


def test_config_rejects_out_of_range_values_with_a_hint() -> None:
    with pytest.raises(ConsensusConfigError, match="choose one of"):
        ConsensusConfig(method="ecl")
    with pytest.raises(ConsensusConfigError, match="learning_rate"):
        ConsensusConfig(learning_rate=0.0)
    with pytest.raises(ConsensusConfigError, match="min_learning_rate > 0"):
        ConsensusConfig(lr_schedule="cosine", schedule_steps=10)
    with pytest.raises(ConsensusConfigError, match="cycle_steps"):
        ConsensusConfig(method="fedavg", lr_schedule="cyclical")
    with pytest.raises(TypeError):
        ConsensusConfig("ecl-pdmm")  # keyword-only
