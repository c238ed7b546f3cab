"""Simulation throughput: 8 hospitals (looped or vmapped) vs one centralized loop, same batch.

Run: `.venv/bin/python -m benchmarks.bench_sim [--threads 2] [--steps 40]`;
writes build/bench/sim.json.
Everything is measured in one run, as ratios, because the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from consensus.topology import Topology, node_names, ring
from hospital_node.model import ModelConfig, build_model
from hospital_node.sim_config import NetworkConfig, SimulationConfig, TrainingConfig
from hospital_node.sim_engine import MethodRun, NodeTrainData

OUT = Path("build/bench/sim.json")


def _data(nodes: tuple[str, ...], per_node: int, size: int, seed: int) -> list[NodeTrainData]:
    g = torch.Generator().manual_seed(seed)
    return [
        NodeTrainData(
            n,
            torch.rand(per_node, 1, size, size, generator=g),
            (torch.rand(per_node, 14, generator=g) < 0.15).float(),
        )
        for n in nodes
    ]


class _Timer:
    """Accumulates wall time spent inside wrapped callables (the consensus share)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def _measure(method: str, graph: Topology, train, config: SimulationConfig, steps: int) -> dict:
    torch.manual_seed(0)
    run = MethodRun(
        method=method, graph=graph, train=train, config=config,
        init_module=build_model(config.model), steps=steps,
    )  # fmt: skip
    timer = _Timer()
    for algorithm in run.algorithms:
        algorithm.local_step = timer.wrap(algorithm.local_step)
    run.transport.swap = timer.wrap(run.transport.swap)
    warm = len(graph.nodes) * 2
    run.advance(warm)  # first calls compile / allocate
    timer.seconds = 0.0
    start = time.perf_counter()
    run.advance(steps * len(graph.nodes))
    elapsed = time.perf_counter() - start
    images = (sum(run.steps_done) - warm) * config.training.batch_size
    return {
        "images_per_s": images / elapsed,
        "seconds": elapsed,
        "consensus_share": timer.seconds / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="local steps per hospital")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--architecture", default="compact")
    parser.add_argument(
        "--exchange-interval",
        type=float,
        default=NetworkConfig().exchange_interval,
        help="local steps between two swaps on one edge (default: the simulation's)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nodes = node_names(8)
    base = SimulationConfig(
        model=ModelConfig(architecture=args.architecture, image_size=args.image_size),
        training=TrainingConfig(batch_size=args.batch_size, batched=False),
        network=NetworkConfig(exchange_interval=args.exchange_interval),
    )
    train = _data(nodes, 256, args.image_size, seed=0)
    union = [
        NodeTrainData(
            "all", torch.cat([t.images for t in train]), torch.cat([t.labels for t in train])
        )
    ]
    central = _measure(
        "centralized", Topology(nodes=("all",), edges=()), union, base, args.steps * 8
    )
    looped = _measure("ecl-pdmm", ring(nodes), train, base, args.steps)
    batched_config = dataclasses.replace(
        base, training=dataclasses.replace(base.training, batched=True)
    )
    batched = _measure("ecl-pdmm", ring(nodes), train, batched_config, args.steps)
    result = {
        "threads": args.threads, "batch_size": args.batch_size, "image_size": args.image_size,
        "architecture": args.architecture, "steps_per_hospital": args.steps,
        "exchange_interval": args.exchange_interval,
        "centralized": central, "ecl_8_nodes_looped": looped, "ecl_8_nodes_vmapped": batched,
        "ratio_looped_vs_centralized": looped["images_per_s"] / central["images_per_s"],
        "ratio_vmapped_vs_centralized": batched["images_per_s"] / central["images_per_s"],
    }  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"{'loop':<24}{'img/s':>10}{'consensus share':>18}")
    for name in ("centralized", "ecl_8_nodes_looped", "ecl_8_nodes_vmapped"):
        r = result[name]
        print(f"{name:<24}{r['images_per_s']:>10.1f}{r['consensus_share']:>17.1%}")
    print(f"8 nodes / centralized: looped {result['ratio_looped_vs_centralized']:.2f}x, "
          f"vmapped {result['ratio_vmapped_vs_centralized']:.2f}x  -> {OUT}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
