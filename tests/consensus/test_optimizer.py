"""ConsensusOptimizer: trains a tiny torch model under every method, reads p.grad, tracks lr."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consensus.algorithms import SERVER, Algorithm, FedAvgServer, make_algorithm
from consensus.config import METHODS, ConsensusConfig
from consensus.optimizer import ConsensusOptimizer
from consensus.topology import node_names, ring

NODES = node_names(3)
TOPOLOGY = ring(NODES)


def mlp(seed: int = 0) -> nn.Module:
    """2-8-1 MLP, initialised from its own generator (the same weights on every node)."""
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def site_data(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable (label = x0 + x1 > 0) but skewed: site k sees its own region of the plane."""
    gen = torch.Generator().manual_seed(100 + k)
    x = torch.randn(64, 2, generator=gen) + torch.tensor([2.0 * k - 2.0, 1.0 - k])
    return x, (x.sum(1, keepdim=True) > 0).float()


DATA = {n: site_data(k) for k, n in enumerate(NODES)}
ALL_X = torch.cat([x for x, _ in DATA.values()])
ALL_Y = torch.cat([y for _, y in DATA.values()])
LOSS = nn.BCEWithLogitsLoss()


def build(
    method: str, **config: object
) -> dict[str, tuple[nn.Module, Algorithm, ConsensusOptimizer]]:
    cfg = ConsensusConfig(method=method, learning_rate=0.2, **config)
    nodes = {}
    for node in NODES:
        model = mlp()
        alg = make_algorithm(
            cfg,
            node=node,
            neighbours=TOPOLOGY.neighbours(node),
            params=dict(model.named_parameters()),
            node_order=TOPOLOGY.nodes,
            edge_weights=TOPOLOGY.edge_weights(node),
            num_samples=len(DATA[node][0]),
        )
        nodes[node] = (model, alg, ConsensusOptimizer(model.named_parameters(), algorithm=alg))
    return nodes


def global_loss(nodes: dict) -> float:
    with torch.no_grad():
        return sum(LOSS(m(ALL_X), ALL_Y).item() for m, _, _ in nodes.values()) / len(nodes)


def train(nodes: dict, steps: int, *, round_every: int = 5) -> None:
    for step in range(steps):
        for node, (model, _, optimizer) in nodes.items():
            x, y = DATA[node]
            optimizer.zero_grad()
            LOSS(model(x), y).backward()
            optimizer.step()
        algorithms = {n: alg for n, (_, alg, _) in nodes.items()}
        if algorithms["N1"].method == "fedavg":
            if (step + 1) % round_every == 0:
                server = FedAvgServer(clients=NODES)
                average = server.aggregate({n: a.outgoing(SERVER) for n, a in algorithms.items()})
                for alg in algorithms.values():
                    alg.incoming(SERVER, average)
            continue
        for a, b in TOPOLOGY.edges:
            m_ab, m_ba = algorithms[a].outgoing(b), algorithms[b].outgoing(a)
            algorithms[a].incoming(b, m_ba)
            algorithms[b].incoming(a, m_ab)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_tiny_mlp(method: str) -> None:
    nodes = build(method)
    before = global_loss(nodes)
    train(nodes, 60)
    after = global_loss(nodes)
    assert after < 0.6 * before, (before, after)


def test_step_reads_the_gradient_a_wrapper_left_in_p_grad() -> None:
    # A DP wrapper rewrites p.grad before calling step(): the step must use what it finds.
    nodes = build("local")
    model, _, optimizer = nodes["N1"]
    x, y = DATA["N1"]
    start = [p.detach().clone() for p in model.parameters()]
    LOSS(model(x), y).backward()
    true_grads = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad.mul_(3.0)
    optimizer.step()
    for p, p0, g in zip(model.parameters(), start, true_grads, strict=True):
        assert torch.allclose(p.detach(), p0 - 0.2 * 3.0 * g, rtol=1e-6, atol=1e-7)
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_param_group_lr_follows_the_schedule_and_state_delegates() -> None:
    nodes = build("ecl-pdmm", lr_schedule="cyclical", cycle_steps=4, min_learning_rate=0.1)
    model, alg, optimizer = nodes["N1"]
    seen = [optimizer.param_groups[0]["lr"]]
    for _ in range(4):
        model(DATA["N1"][0]).sum().backward()
        optimizer.step()
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1, 0.15, 0.2, 0.15, 0.1])
    state = optimizer.state_dict()
    assert state["meta"]["step"] == 4 and "dual/N2/0.weight" in state["tensors"]
    _, fresh_alg, fresh = build(
        "ecl-pdmm", lr_schedule="cyclical", cycle_steps=4, min_learning_rate=0.1
    )["N1"]
    fresh.load_state_dict(state)
    assert fresh_alg.step == 4 and fresh.param_groups[0]["lr"] == pytest.approx(0.1)


def test_optimizer_refuses_an_algorithm_over_other_tensors() -> None:
    model = mlp()
    copies = {k: v.detach().clone() for k, v in model.named_parameters()}
    alg = make_algorithm(ConsensusConfig(method="local"), node="N1", neighbours=[], params=copies)
    with pytest.raises(ValueError, match="not the model's parameter"):
        ConsensusOptimizer(model.named_parameters(), algorithm=alg)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_opacus_dp_optimizer_wraps_it() -> None:
    # noise 0 and a huge clip norm: the DP step equals the plain step on the mean gradient.
    opacus = pytest.importorskip("opacus")
    nodes = build("gossip")
    model, _, optimizer = nodes["N1"]
    reference = mlp()
    x, y = DATA["N1"]
    LOSS(reference(x), y).backward()
    expected = [p.detach() - 0.2 * p.grad for p in reference.parameters()]
    private = opacus.GradSampleModule(model)
    dp = opacus.optimizers.DPOptimizer(
        optimizer, noise_multiplier=0.0, max_grad_norm=1e6, expected_batch_size=len(x)
    )
    dp.zero_grad()
    LOSS(private(x), y).backward()
    dp.step()
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.detach(), e, rtol=1e-5, atol=1e-6)
