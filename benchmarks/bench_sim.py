"""Simulation throughput: 8 hospitals (looped or vmapped) vs one centralized loop, same batch.

Run: `.venv/bin/python -m benchmarks.bench_sim [--threads 2] [--steps 40]`;
writes build/bench/sim.json.
Everything is measured in one run, as ratios, because the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

from consensus.topology import Topology, node_names, ring
from hospital_node.simulation.config import NetworkConfig, SimulationConfig, TrainingConfig
from hospital_node.simulation.engine import MethodRun, NodeTrainData
from hospital_node.training.model import ModelConfig, build_model

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


class _Measured:
    """One engine's run, advanced slice by slice; wall time and consensus time per slice.

    `per_step`: local steps of the whole run per step of one hospital (8 hospitals: 8; the
    centralized loop on the same images: 8 of its own). Two steps per node warm up first.
    """

    def __init__(
        self, method: str, graph: Topology, train, config: SimulationConfig, *, steps: int,
        per_step: int,
    ) -> None:  # fmt: skip
        torch.manual_seed(0)
        nodes = len(graph.nodes)
        self.warm, self.per_step = 2 * nodes, per_step
        self.run = MethodRun(
            method=method, graph=graph, train=train, config=config,
            init_module=build_model(config.model), steps=(steps * per_step + self.warm) // nodes,
        )  # fmt: skip
        self.timer = _Timer()
        for algorithm in self.run.algorithms:
            algorithm.local_step = self.timer.wrap(algorithm.local_step)
        self.run.transport.swap = self.timer.wrap(self.run.transport.swap)
        self.groups: list[int] = []  # hospitals per gradient computation (vmapped batch)
        gradients = self.run.stack.gradients

        def counted(nodes, trainers):
            self.groups.append(len(nodes))
            return gradients(nodes, trainers)

        self.run.stack.gradients = counted
        self.batch = config.training.batch_size
        self.run.advance(self.warm)  # first calls compile / allocate
        self.slices: list[dict] = []

    def advance(self, until_steps: int) -> None:
        """Advance to `until_steps` steps per hospital (past the warm-up), timed."""
        self.timer.seconds = 0.0
        before = sum(self.run.steps_done)
        start = time.perf_counter()
        self.run.advance(self.warm + until_steps * self.per_step)
        elapsed = time.perf_counter() - start
        images = (sum(self.run.steps_done) - before) * self.batch
        self.slices.append({"images": images, "seconds": elapsed, "consensus": self.timer.seconds})

    def summary(self) -> dict:
        images = sum(s["images"] for s in self.slices)
        seconds = sum(s["seconds"] for s in self.slices)
        return {
            "images_per_s": images / seconds,
            "seconds": seconds,
            "consensus_share": sum(s["consensus"] for s in self.slices) / seconds,
            "mean_hospitals_per_gradient_call": sum(self.groups) / max(1, len(self.groups)),
        }


def _interleaved(engines: dict[str, _Measured], *, steps: int, rounds: int) -> dict[str, float]:
    """Advance the engines in turn, `rounds` slices each, so load changes hit them alike.

    Returns the median over rounds of each engine's slice throughput over the first one's.
    """
    for r in range(1, rounds + 1):
        for engine in engines.values():
            engine.advance(steps * r // rounds)
    first, *others = engines
    ratios = {}
    for name in others:
        per_round = [
            (s["images"] / s["seconds"]) / (c["images"] / c["seconds"])
            for s, c in zip(engines[name].slices, engines[first].slices, strict=True)
        ]
        ratios[name] = statistics.median(per_round)
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="local steps per hospital")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--architecture", default="compact")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--rounds", type=int, default=4, help="slices per engine, taken in turn (A B C A B C ...)"
    )
    parser.add_argument(
        "--exchange-interval",
        type=float,
        default=NetworkConfig().exchange_interval,
        help="local steps between two swaps on one edge (default: the simulation's)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    nodes = node_names(8)
    base = SimulationConfig(
        model=ModelConfig(architecture=args.architecture),
        training=TrainingConfig(batch_size=args.batch_size),
        network=NetworkConfig(exchange_interval=args.exchange_interval),
        batched=False,
    )
    train = _data(nodes, 256, args.image_size, seed=0)
    union = [
        NodeTrainData(
            "all", torch.cat([t.images for t in train]), torch.cat([t.labels for t in train])
        )
    ]
    batched_config = dataclasses.replace(base, batched=True)
    central_graph = Topology(nodes=("all",), edges=())
    per_step = {"steps": args.steps, "per_step": len(nodes)}
    engines = {  # the centralized loop: 8 steps of batch 16 per hospital step, same images
        "centralized": _Measured("centralized", central_graph, union, base, **per_step),
        "ecl_8_nodes_looped": _Measured("ecl-pdmm", ring(nodes), train, base, **per_step),
        "ecl_8_nodes_vmapped": _Measured(
            "ecl-pdmm", ring(nodes), train, batched_config, **per_step
        ),
    }
    medians = _interleaved(engines, steps=args.steps, rounds=args.rounds)
    central, looped, batched = (e.summary() for e in engines.values())
    result = {
        "threads": args.threads, "batch_size": args.batch_size, "image_size": args.image_size,
        "architecture": args.architecture, "steps_per_hospital": args.steps,
        "exchange_interval": args.exchange_interval,
        "centralized": central, "ecl_8_nodes_looped": looped, "ecl_8_nodes_vmapped": batched,
        "ratio_looped_vs_centralized": looped["images_per_s"] / central["images_per_s"],
        "ratio_vmapped_vs_centralized": batched["images_per_s"] / central["images_per_s"],
        "rounds": args.rounds,
        "median_round_ratio_looped": medians["ecl_8_nodes_looped"],
        "median_round_ratio_vmapped": medians["ecl_8_nodes_vmapped"],
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'loop':<24}{'img/s':>10}{'consensus share':>18}{'per call':>10}")
    for name in ("centralized", "ecl_8_nodes_looped", "ecl_8_nodes_vmapped"):
        r = result[name]
        print(f"{name:<24}{r['images_per_s']:>10.1f}{r['consensus_share']:>17.1%}"
              f"{r['mean_hospitals_per_gradient_call']:>10.2f}")  # fmt: skip
    loads = ", ".join(f"{x:.1f}" for x in result["load_average_1min"])
    print(f"load average (start, end): {loads}")
    print(f"median over rounds: looped {medians['ecl_8_nodes_looped']:.2f}x, "
          f"vmapped {medians['ecl_8_nodes_vmapped']:.2f}x")  # fmt: skip
    print(f"8 nodes / centralized: looped {result['ratio_looped_vs_centralized']:.2f}x, "
          f"vmapped {result['ratio_vmapped_vs_centralized']:.2f}x  -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
