"""Why ECL can trail gossip with small batches: gradient noise vs heterogeneity bias, measured.

On the non-homogeneous least-squares ring of the convex tests (8 nodes, asynchronous swaps),
every method takes the same gradient step a/L (ECL's learning rate is raised by 1 +
consensus_weight so that 1/(mu + eta) = a/L), and Gaussian noise of `noise` x the mean
gradient norm at zero is added to every gradient. Reported: the mean squared distance of
the node models to the centralized minimiser over the last 40 % of the steps. With exact
gradients gossip keeps a bias and ECL reaches the minimiser; with noisy gradients ECL's
duals integrate the noise, and the method whose floor is lower flips (docs/algorithm.md
sec. 9).

    python -m benchmarks.bench_ecl_noise            # writes build/bench/ecl_noise.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "consensus"))
from convex_problems import (  # noqa: E402  (the convex test problems, one source of truth)
    ConvexProblem,
    build_algorithms,
    direct_swap,
    flat,
    least_squares_problem,
)

from consensus.config import ConsensusConfig  # noqa: E402
from consensus.exchange_schedule import ExchangeSchedule, Step, Swap  # noqa: E402
from consensus.topology import node_names, ring  # noqa: E402

DEFAULT_OUT = Path("build/bench/ecl_noise.json")
# (label, method, consensus_weight, admm_relaxation)
VARIANTS = (
    ("gossip", "gossip", 0.5, 0.5),
    ("ecl-pdmm", "ecl-pdmm", 0.5, 0.5),
    ("ecl-admm", "ecl-admm", 0.5, 0.5),
    ("ecl-admm theta 0.1, eta/mu 1", "ecl-admm", 1.0, 0.1),
)


def floor_mse(
    problem: ConvexProblem,
    *,
    method: str,
    step: float,
    noise: float,
    consensus_weight: float,
    theta: float,
    steps: int,
    exchange_interval: float,
    seed: int,
) -> float:
    """Mean over the last 40 % of steps of mean_i ||w_i - w*||^2 (noise and bias together)."""
    nodes = problem.nodes
    topology = ring(nodes)
    lipschitz = max(problem.lipschitz(n) for n in nodes)
    optimum = problem.minimiser()
    scale = torch.stack(
        [problem.flat_gradient(n, torch.zeros_like(optimum)).norm() for n in nodes]
    ).mean()
    # same gradient step for every method: ECL's step on the gradient is 1 / (mu + eta)
    lr = step / lipschitz * ((1 + consensus_weight) if method.startswith("ecl") else 1.0)
    config = ConsensusConfig(
        method=method,
        learning_rate=lr,
        consensus_weight=consensus_weight,
        admm_relaxation=theta,
    )
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
                kick = torch.randn(g.shape, generator=generator, dtype=g.dtype)
                g.add_(kick, alpha=noise * scale)
            algorithm.local_step(grads)
            if event.node == nodes[0]:
                taken += 1
                if taken > 0.6 * steps:
                    errors.append(
                        sum(((flat(a.params) - optimum) ** 2).sum() for a in algorithms.values())
                        / len(algorithms)
                    )
        elif isinstance(event, Swap):
            direct_swap(algorithms[event.a], algorithms[event.b], event.lost_ab, event.lost_ba)
    return float(sum(errors) / len(errors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="local steps per node")
    parser.add_argument("--step", type=float, default=0.3, help="gradient step x L")
    parser.add_argument("--noise", default="0,0.03,0.1,0.3,1", help="comma-separated levels")
    parser.add_argument("--exchange-interval", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    problem = least_squares_problem(node_names(8))
    levels = [float(x) for x in args.noise.split(",")]
    started = time.perf_counter()
    rows = []
    print(f"{'noise':>6} " + " ".join(f"{label:>30}" for label, *_ in VARIANTS))
    for noise in levels:
        row = {
            label: floor_mse(
                problem,
                method=method,
                step=args.step,
                noise=noise,
                consensus_weight=cw,
                theta=theta,
                steps=args.steps,
                exchange_interval=args.exchange_interval,
                seed=args.seed,
            )
            for label, method, cw, theta in VARIANTS
        }
        rows.append({"noise": noise, "mse": row})
        print(f"{noise:>6g} " + " ".join(f"{v:>30.3e}" for v in row.values()), flush=True)
    result = {
        "benchmark": "ecl_noise",
        "problem": "least squares, 8 nodes, ring, non-homogeneous (tests/consensus)",
        "steps": args.steps,
        "gradient_step_times_L": args.step,
        "exchange_interval": args.exchange_interval,
        "seed": args.seed,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
