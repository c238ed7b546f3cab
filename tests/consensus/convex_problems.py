"""Convex distributed problems with exact gradients and known minimisers, plus event runners.

Importable by any test under tests/consensus (conftest.py puts this folder on sys.path):
    from convex_problems import least_squares_problem, build_algorithms, run_events
`run_events(..., swap=...)` takes another swap function, e.g. one through a transport;
`floor_mse` runs the noisy-gradient setting of benchmarks/bench_ecl_noise.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from consensus.algorithms import SERVER, Algorithm, FedAvgServer, make_algorithm
from consensus.config import ConsensusConfig
from consensus.exchange_schedule import Event, ExchangeSchedule, Round, Step, Swap
from consensus.topology import Topology, ring

DTYPE = torch.float64


@dataclass(frozen=True)
class ConvexProblem:
    """Node i minimises f_i(w, b) = mean_k loss(x_k w + b, y_k) + regularisation/2 ||(w, b)||^2.

    Parameters are {"weight": (1, d), "bias": (1,)}: two tensors, like a linear layer.
    """

    kind: str  # "least_squares" | "logistic"
    features: dict[str, Tensor]  # node -> (m_i, d)
    targets: dict[str, Tensor]  # node -> (m_i,); logistic targets in {0, 1}
    regularisation: float

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self.features)

    @property
    def dim(self) -> int:
        return next(iter(self.features.values())).shape[1]

    def _augmented(self, node: str) -> Tensor:
        """[x, 1] rows, cached: the gradient is evaluated tens of thousands of times."""
        cache = self.__dict__.setdefault("_augmented_cache", {})
        if node not in cache:
            x = self.features[node]
            cache[node] = torch.cat([x, torch.ones(x.shape[0], 1, dtype=DTYPE)], dim=1)
        return cache[node]

    def flat_gradient(self, node: str, theta: Tensor) -> Tensor:
        """Gradient of f_i at theta = (w, b) flattened."""
        if self.kind == "least_squares":  # H_i theta - h_i with both cached: one matvec
            hessian, linear = self._quadratic(node)
            return hessian @ theta - linear
        xa, y = self._augmented(node), self.targets[node]
        scores = xa @ theta
        residual = scores - y if self.kind == "least_squares" else torch.sigmoid(scores) - y
        return xa.T @ residual / xa.shape[0] + self.regularisation * theta

    def gradient(self, node: str, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        g = self.flat_gradient(node, flat(params))
        return {"weight": g[:-1].view(1, -1), "bias": g[-1:]}

    def _quadratic(self, node: str) -> tuple[Tensor, Tensor]:
        cache = self.__dict__.setdefault("_quadratic_cache", {})
        if node not in cache:
            xa, y = self._augmented(node), self.targets[node]
            cache[node] = (self._hessian(node, None), xa.T @ y / xa.shape[0])
        return cache[node]

    def lipschitz(self, node: str) -> float:
        """Largest curvature of f_i (logistic: 1/4 of the least-squares one)."""
        xa = self._augmented(node)
        top = torch.linalg.eigvalsh(xa.T @ xa / xa.shape[0]).max().item()
        return (top if self.kind == "least_squares" else top / 4) + self.regularisation

    def minimiser(self) -> Tensor:
        """The centralized solution of min sum_i f_i, flattened (w, b)."""
        theta = torch.zeros(self.dim + 1, dtype=DTYPE)
        for _ in range(50):  # Newton; exact in one step for least squares
            grad = sum(self.flat_gradient(n, theta) for n in self.nodes)
            hess = sum(self._hessian(n, theta) for n in self.nodes)
            theta = theta - torch.linalg.solve(hess, grad)
            if grad.norm() < 1e-15:
                break
        return theta

    def _hessian(self, node: str, theta: Tensor | None) -> Tensor:
        xa = self._augmented(node)
        if self.kind == "least_squares":
            weights = torch.ones(xa.shape[0], dtype=DTYPE)
        else:
            p = torch.sigmoid(xa @ theta)
            weights = p * (1 - p)
        eye = torch.eye(xa.shape[1], dtype=DTYPE)
        return (xa.T * weights) @ xa / xa.shape[0] + self.regularisation * eye

    def initial_params(self) -> dict[str, Tensor]:
        return {
            "weight": torch.zeros(1, self.dim, dtype=DTYPE),
            "bias": torch.zeros(1, dtype=DTYPE),
        }


def _skewed_features(nodes: tuple[str, ...], dim: int, samples: int, seed: int) -> dict:
    """Per-node features with very different means and scales (non-homogeneous sites)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, node in enumerate(nodes):
        shift = 1.5 * torch.randn(dim, generator=gen, dtype=DTYPE)
        scale = 0.5 + k / len(nodes)
        out[node] = shift + scale * torch.randn(samples, dim, generator=gen, dtype=DTYPE)
    return out


def least_squares_problem(
    nodes: tuple[str, ...], *, dim: int = 3, samples: int = 20, seed: int = 0
) -> ConvexProblem:
    """Each node's targets come from its own linear model: the local optima disagree.

    regularisation 0.5 keeps the condition number low enough for tests of a second or two.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    features = _skewed_features(nodes, dim, samples, seed)
    targets = {}
    for k, node in enumerate(nodes):
        local_truth = torch.randn(dim, generator=gen, dtype=DTYPE) + (k % 3)
        noise = 0.1 * torch.randn(samples, generator=gen, dtype=DTYPE)
        targets[node] = features[node] @ local_truth + (k - 3.0) + noise
    return ConvexProblem("least_squares", features, targets, regularisation=0.5)


def logistic_problem(
    nodes: tuple[str, ...], *, dim: int = 3, samples: int = 20, seed: int = 0
) -> ConvexProblem:
    """Label skew: node k's positives rate ranges from ~10% to ~90% across nodes."""
    gen = torch.Generator().manual_seed(seed + 2)
    features = _skewed_features(nodes, dim, samples, seed)
    truth = torch.randn(dim, generator=gen, dtype=DTYPE)
    targets = {}
    for k, node in enumerate(nodes):
        offset = -2.0 + 4.0 * k / max(len(nodes) - 1, 1)
        logits = (features[node] - features[node].mean(0)) @ truth + offset
        uniform = torch.rand(samples, generator=gen, dtype=DTYPE)
        targets[node] = (uniform < torch.sigmoid(logits)).to(DTYPE)
    return ConvexProblem("logistic", features, targets, regularisation=0.1)


def build_algorithms(
    config: ConsensusConfig, topology: Topology, problem: ConvexProblem
) -> dict[str, Algorithm]:
    """One algorithm per node of `topology`, symmetric edge weights, zero initial models."""
    return {
        node: make_algorithm(
            config,
            node=node,
            neighbours=topology.neighbours(node),
            params=problem.initial_params(),
            node_order=topology.nodes,
            edge_weights=topology.edge_weights(node),
            num_samples=problem.features[node].shape[0],
        )
        for node in topology.nodes
    }


SwapFunction = Callable[[Algorithm, Algorithm, bool, bool], None]


def direct_swap(a: Algorithm, b: Algorithm, lost_ab: bool, lost_ba: bool) -> None:
    """Both outgoing messages first, then both incoming (a lost one is never delivered)."""
    message_ab, message_ba = a.outgoing(b.node), b.outgoing(a.node)
    if not lost_ba:
        a.incoming(b.node, message_ba)
    if not lost_ab:
        b.incoming(a.node, message_ab)


def fedavg_round(algorithms: Mapping[str, Algorithm]) -> None:
    server = FedAvgServer(clients=tuple(algorithms))
    average = server.aggregate({n: alg.outgoing(SERVER) for n, alg in algorithms.items()})
    for alg in algorithms.values():
        alg.incoming(SERVER, average)


def run_events(
    algorithms: Mapping[str, Algorithm],
    problem: ConvexProblem,
    events: Iterable[Event],
    *,
    swap: SwapFunction = direct_swap,
) -> None:
    """Drive the algorithms through an event stream with exact gradients."""
    for event in events:
        match event:
            case Step(node=node):
                alg = algorithms[node]
                alg.local_step(problem.gradient(node, alg.params))
            case Swap(a=a, b=b, lost_ab=lost_ab, lost_ba=lost_ba):
                swap(algorithms[a], algorithms[b], lost_ab, lost_ba)
            case Round():
                fedavg_round(algorithms)


def flat(params: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([params["weight"].reshape(-1), params["bias"].reshape(-1)])


def distance_to(algorithms: Mapping[str, Algorithm], target: Tensor) -> float:
    """max_i ||w_i - target||."""
    return max((flat(a.params) - target).norm().item() for a in algorithms.values())


def consensus_residual(algorithms: Mapping[str, Algorithm]) -> float:
    """max_ij ||w_i - w_j||."""
    models = [flat(a.params) for a in algorithms.values()]
    return max((x - y).norm().item() for x in models for y in models)


def noise_scale(problem: ConvexProblem) -> float:
    """The mean over nodes of the gradient norm at zero: the unit of the noise levels."""
    zero = torch.zeros(problem.dim + 1, dtype=DTYPE)
    return float(torch.stack([problem.flat_gradient(n, zero).norm() for n in problem.nodes]).mean())


def floor_mse(
    problem: ConvexProblem,
    config: ConsensusConfig,
    *,
    noise: float,
    steps: int,
    exchange_interval: float,
    seed: int,
) -> float:
    """Steady-state error on a ring with Gaussian gradient noise of `noise` x `noise_scale`.

    The mean over the last 40 % of the first node's steps of mean_i ||w_i - w*||^2 (noise and
    bias together). Seeded: every config sees the same events and the same noise draws.
    """
    topology = ring(problem.nodes)
    optimum = problem.minimiser()
    scale = noise * noise_scale(problem)
    algorithms = build_algorithms(config, topology, problem)
    generator = torch.Generator().manual_seed(seed)
    schedule = ExchangeSchedule(
        topology=topology, steps=steps, exchange_interval=exchange_interval, seed=seed
    )
    taken, errors = 0, []
    for event in schedule:
        if isinstance(event, Step):
            algorithm = algorithms[event.node]
            grads = problem.gradient(event.node, algorithm.params)
            for g in grads.values():
                g.add_(torch.randn(g.shape, generator=generator, dtype=g.dtype), alpha=scale)
            algorithm.local_step(grads)
            if event.node == problem.nodes[0]:
                taken += 1
                if taken > 0.6 * steps:
                    models = torch.stack([flat(a.params) for a in algorithms.values()])
                    errors.append(float(((models - optimum) ** 2).sum(dim=1).mean()))
        elif isinstance(event, Swap):
            direct_swap(algorithms[event.a], algorithms[event.b], event.lost_ab, event.lost_ba)
    return sum(errors) / len(errors)
