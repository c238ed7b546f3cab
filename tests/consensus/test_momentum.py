"""Heavy-ball momentum (eq. 24): golden steps, torch.optim.SGD agreement, state, off by default."""

from __future__ import annotations

import pytest
import torch
from convex_problems import build_algorithms, least_squares_problem

from consensus.algorithms import Algorithm, make_algorithm
from consensus.config import ConsensusConfig, ConsensusConfigError
from consensus.topology import node_names, ring

F64 = torch.float64


def scalar_node(method: str, **settings: object) -> Algorithm:
    cfg = ConsensusConfig(method=method, learning_rate=0.5, **settings)
    params = {"w": torch.zeros(1, dtype=F64)}
    if method == "fedavg":
        return make_algorithm(cfg, node="N1", neighbours=[], params=params, num_samples=1)
    return make_algorithm(cfg, node="N1", neighbours=["N2"], params=params)


def test_golden_heavy_ball_steps() -> None:
    # f = (w - 1)^2 / 2, lr 0.5, b 0.5:  g -1, m -1, w 0.5;  g -0.5, m -1, w 1;  g 0, m -0.5, w 1.25
    alg = scalar_node("local", momentum=0.5)
    seen = []
    for _ in range(3):
        alg.local_step({"w": alg.params["w"] - 1.0})
        seen.append(alg.params["w"].item())
    assert seen == [0.5, 1.0, 1.25]
    assert alg.state_dict()["tensors"]["momentum/w"].item() == -0.5


@pytest.mark.parametrize("method", ["local", "gossip", "fedavg"])
def test_sgd_methods_step_like_torch_sgd_with_momentum_and_weight_decay(method: str) -> None:
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(3, 2, generator=generator, dtype=F64)
    grads = [torch.randn(3, 2, generator=generator, dtype=F64) for _ in range(5)]
    cfg = ConsensusConfig(method=method, learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    extra = {"num_samples": 1} if method == "fedavg" else {}
    alg = make_algorithm(cfg, node="N1", neighbours=["N2"], params={"w": start.clone()}, **extra)
    reference = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.SGD([reference], lr=0.1, momentum=0.9, weight_decay=0.01)
    for grad in grads:
        alg.local_step({"w": grad})
        reference.grad = grad.clone()
        optimizer.step()
    assert torch.allclose(alg.params["w"], reference.detach(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", ["ecl-pdmm", "ecl-isvr-admm", "gradient-tracking", "gossip"])
def test_momentum_buffers_are_checkpointed_and_a_changed_setting_is_refused(method: str) -> None:
    topology = ring(node_names(3))
    problem = least_squares_problem(topology.nodes)
    with_momentum = build_algorithms(
        ConsensusConfig(method=method, momentum=0.5), topology, problem
    )["N1"]
    without = build_algorithms(ConsensusConfig(method=method), topology, problem)["N1"]
    with_momentum.local_step(problem.gradient("N1", with_momentum.params))
    state = with_momentum.state_dict()
    assert "momentum/weight" in state["tensors"] and "momentum/bias" in state["tensors"]
    assert not any(k.startswith("momentum/") for k in without.state_dict()["tensors"])
    with pytest.raises(ValueError, match="momentum"):
        without.load_state_dict(state)
    with pytest.raises(ValueError, match="momentum"):
        with_momentum.load_state_dict(without.state_dict())


def test_momentum_zero_is_the_plain_step_bit_for_bit() -> None:
    plain = scalar_node("gossip")
    zero = scalar_node("gossip", momentum=0.0)
    for alg in (plain, zero):
        for _ in range(3):
            alg.local_step({"w": alg.params["w"] * 0.3 - 1.0})
    assert torch.equal(plain.params["w"], zero.params["w"])


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_config_refuses_momentum_outside_0_1(value: float) -> None:
    with pytest.raises(ConsensusConfigError, match="momentum"):
        ConsensusConfig(momentum=value)
