"""The consensus work of one simulated round, alone: 8 ECL hospitals on a ring (compact model),
one local step each and one swap per edge (encode, gate, dual update), as bench_sim's default.

Run: `.venv/bin/python -m benchmarks.bench_sim_consensus [--threads 1] [--rounds 40]`; writes
build/bench/sim_consensus.json. The fused and the reference primal step (`FlatState.fused`)
are timed in turn in one process; the gradient computation is left out (fixed gradients), so
this is the part of bench_sim's time that the consensus code owns.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.bench_consensus import interleaved_medians
from consensus.algorithms import make_algorithm
from consensus.config import ConsensusConfig
from consensus.topology import node_names, ring
from consensus.transport.memory import InMemoryTransport
from hospital_node.training.model import ModelConfig, build_model
from hospital_node.training.step import ModelStack

OUT = Path("build/bench/sim_consensus.json")


def simulated_round(*, fused: bool, hospitals: int = 8):
    """A callable doing one round: every hospital steps, then every ring edge swaps."""
    graph = ring(node_names(hospitals))
    stack = ModelStack(build_model(ModelConfig(architecture="compact")), copies=hospitals)
    generator = torch.Generator().manual_seed(0)
    grads = {n: torch.randn(v.shape, generator=generator) * 1e-3 for n, v in stack.views[0].items()}
    config = ConsensusConfig(method="ecl-pdmm", learning_rate=0.1, matched_step=True)
    transport = InMemoryTransport()
    algorithms = []
    for i, node in enumerate(graph.nodes):
        algorithm = make_algorithm(
            config, node=node, neighbours=graph.neighbours(node), params=stack.views[i],
            node_order=graph.nodes, edge_weights=graph.edge_weights(node),
        )  # fmt: skip
        algorithm._state.fused = fused  # the before/after switch (FlatState.fused)
        transport.register(algorithm, peers=graph.neighbours(node))
        algorithms.append(algorithm)

    def one_round() -> None:
        for algorithm in algorithms:
            algorithm.local_step(grads)
        for a, b in graph.edges:
            transport.swap(a, b)

    return one_round, algorithms, transport


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    fused, algorithms, transport = simulated_round(fused=True)
    reference, _, _ = simulated_round(fused=False)
    medians = interleaved_medians({"fused": fused, "reference": reference}, repeats=args.rounds)
    # the parts of the fused round, for the record: local steps vs swaps
    start = time.perf_counter()
    for algorithm in algorithms:
        algorithm.local_step({n: torch.zeros_like(t) for n, t in algorithm.params.items()})
    steps_s = time.perf_counter() - start
    start = time.perf_counter()
    for a, b in ring(node_names(8)).edges:
        transport.swap(a, b)
    swaps_s = time.perf_counter() - start
    result = {
        "threads": args.threads, "rounds": args.rounds,
        "round_ms": {k: 1e3 * v for k, v in medians.items()},
        "one_pass_ms": {"8_local_steps": 1e3 * steps_s, "8_swaps": 1e3 * swaps_s},
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
