"""Steady-state error under gradient noise: ECL, ECL-ISVR, gradient tracking and gossip, measured.

On the non-homogeneous least-squares ring of the convex tests (8 nodes, asynchronous swaps,
about one swap per edge every `exchange interval` local steps), every method takes the same
gradient step a/L (ECL and ECL-ISVR with `matched_step`, so 1/(mu + eta) = a/L; with momentum
b the learning rate is a(1 - b)/L, so the steady step on the gradient is a/L again), and
Gaussian noise of `noise` x the mean gradient norm at zero is added to every gradient.
Reported: the mean squared distance of the node models to the centralized minimiser over the
last 40 % of the steps, averaged over seeds. ECL-ISVR's K (`isvr_local_steps`) is the
exchange interval, as the simulation sets it. docs/algorithm.md secs. 9 and 10.6.

    python -m benchmarks.bench_ecl_noise   # writes build/bench/ and benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "consensus"))
from convex_problems import (  # noqa: E402  (the convex test problems, one source of truth)
    ConvexProblem,
    floor_mse,
    least_squares_problem,
)

from consensus.config import ConsensusConfig  # noqa: E402
from consensus.topology import node_names  # noqa: E402

DEFAULT_OUT = (Path("build/bench/ecl_noise.json"), Path("benchmarks/results/ecl_noise.json"))


@dataclass(frozen=True)
class Variant:
    """One column of the table: a method and the settings that differ from ConsensusConfig's.

    Labels: "th0.1 cw1" is admm_relaxation 0.1 and consensus_weight 1; "m0.9" momentum 0.9.
    """

    label: str
    method: str
    settings: Mapping[str, Any] = field(default_factory=dict)


VARIANTS = (
    Variant("gossip", "gossip"),
    Variant("ecl-pdmm", "ecl-pdmm"),
    Variant("ecl-admm", "ecl-admm"),
    Variant("ecl-admm th0.1 cw1", "ecl-admm", {"admm_relaxation": 0.1, "consensus_weight": 1.0}),
    Variant("ecl-isvr-pdmm", "ecl-isvr-pdmm"),
    Variant("ecl-isvr-admm", "ecl-isvr-admm"),
    Variant("grad-tracking", "gradient-tracking"),
    Variant("grad-tracking m0.9", "gradient-tracking", {"momentum": 0.9}),
    Variant("gossip m0.9", "gossip", {"momentum": 0.9}),
    Variant("ecl-pdmm m0.9", "ecl-pdmm", {"momentum": 0.9}),
    Variant("ecl-isvr-admm m0.9", "ecl-isvr-admm", {"momentum": 0.9}),
)  # fmt: skip
# Not in the default table: on the ring, eta/mu = 2 is the weight c = 1/s per edge of the
# form reported to stay finite at K = 1 (docs/algorithm.md sec. 10.2); `--variants` picks it.
EXTRA_VARIANTS = (Variant("ecl-pdmm cw2", "ecl-pdmm", {"consensus_weight": 2.0}),)


def variant_config(
    variant: Variant, *, step: float, lipschitz: float, exchange_interval: float
) -> ConsensusConfig:
    """The variant's config at gradient step `step`/L (see the module docstring)."""
    settings = dict(variant.settings)
    momentum = float(settings.get("momentum", 0.0))
    return ConsensusConfig(
        method=variant.method,
        learning_rate=step / lipschitz * (1.0 - momentum),
        matched_step=True,
        isvr_local_steps=exchange_interval,
        **settings,
    )


def measure(
    args: argparse.Namespace, problem: ConvexProblem, variants: tuple[Variant, ...]
) -> list[dict[str, Any]]:
    """One row per (exchange interval, noise level): every variant's floor, mean over seeds."""
    lipschitz = max(problem.lipschitz(n) for n in problem.nodes)
    labels = [v.label for v in variants]
    print(f"{'interval':>8} {'noise':>6} " + " ".join(f"{label:>18}" for label in labels))
    rows = []
    for interval in args.intervals:
        for noise in args.noise:
            mse = {}
            for variant in variants:
                config = variant_config(
                    variant, step=args.step, lipschitz=lipschitz, exchange_interval=interval
                )
                floors = [
                    floor_mse(
                        problem,
                        config,
                        noise=noise,
                        steps=args.steps,
                        exchange_interval=interval,
                        seed=args.seed + k,
                    )
                    for k in range(args.seeds)
                ]
                mse[variant.label] = sum(floors) / len(floors)
            rows.append({"exchange_interval": interval, "noise": noise, "mse": mse})
            cells = " ".join(f"{value:>18.3e}" for value in mse.values())
            print(f"{interval:>8g} {noise:>6g} {cells}", flush=True)
    return rows


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def chosen_variants(text: str | None) -> tuple[Variant, ...]:
    """The variants named in `text` (comma-separated labels), or the default table."""
    if text is None:
        return VARIANTS
    known = {v.label: v for v in VARIANTS + EXTRA_VARIANTS}
    unknown = [label for label in text.split(",") if label not in known]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(known)}")
    return tuple(known[label] for label in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="local steps per node")
    parser.add_argument("--step", type=float, default=0.3, help="gradient step x L")
    parser.add_argument(
        "--noise", type=floats, default="0,0.1,0.3,1", help="noise levels x mean gradient norm"
    )
    parser.add_argument(
        "--intervals", type=floats, default="1,2,8", help="exchange intervals, comma-separated"
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=3, help="seeds averaged per cell")
    parser.add_argument("--variants", help="comma-separated labels (default: the full table)")
    parser.add_argument(
        "--out", type=Path, action="append", help="JSON output (repeatable; default: both of "
        + ", ".join(map(str, DEFAULT_OUT)) + ")",
    )  # fmt: skip
    args = parser.parse_args(argv)
    variants = chosen_variants(args.variants)
    torch.set_num_threads(1)
    problem = least_squares_problem(node_names(8))
    started = time.perf_counter()
    rows = measure(args, problem, variants)
    result = {
        "benchmark": "ecl_noise",
        "problem": "least squares, 8 nodes, ring, non-homogeneous (tests/consensus)",
        "command": "python -m benchmarks.bench_ecl_noise " + " ".join(argv or sys.argv[1:]),
        "steps": args.steps,
        "gradient_step_times_L": args.step,
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "variants": {v.label: {"method": v.method, **v.settings} for v in variants},
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for out in args.out or DEFAULT_OUT:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
