"""Ray backend vs in-process engine: N hospitals (default 32) of ECL-PDMM on a ring, img/s.

Run: `.venv/bin/python -m benchmarks.bench_ray [--hospitals 32] [--steps 6]` (needs the ray
extra); writes build/bench/ray.json. Both engines are built first, then advanced in turn,
slice by slice, so a change of load hits both; actor start-up is timed apart from training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench_sim import _data
from consensus.topology import node_names, ring
from hospital_node.simulation.config import RayConfig, SimulationConfig, TrainingConfig
from hospital_node.simulation.engine import MethodRun
from hospital_node.simulation.ray_engine import RayMethodRun
from hospital_node.training.model import ModelConfig, build_model

OUT = Path("build/bench/ray.json")


def _cpu_seconds(run) -> float:
    """CPU time of the engine: this process, plus the actors' for Ray."""
    return time.process_time() + (run.cpu_seconds() if isinstance(run, RayMethodRun) else 0.0)


def _timed_advance(run, total: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, local steps) of advancing `run` to `total` steps."""
    before, cpu = sum(run.steps_done), _cpu_seconds(run)
    start = time.perf_counter()
    run.advance(total)
    wall = time.perf_counter() - start
    return wall, _cpu_seconds(run) - cpu, sum(run.steps_done) - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hospitals", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed local steps per hospital")
    parser.add_argument("--rounds", type=int, default=3, help="slices per engine, in turn")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, in-process")
    parser.add_argument("--cpus-per-hospital", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    nodes = node_names(args.hospitals)
    config = SimulationConfig(
        model=ModelConfig(architecture="compact"),
        training=TrainingConfig(batch_size=args.batch_size, threads=1),  # per actor
        ray=RayConfig(cpus_per_hospital=args.cpus_per_hospital),
    )
    train = _data(nodes, 64, args.image_size, seed=0)
    common = {"method": "ecl-pdmm", "graph": ring(nodes), "train": train, "steps": args.steps + 1}
    torch.manual_seed(0)
    engines = {
        "inprocess": MethodRun(config=config, init_module=build_model(config.model), **common),
        "ray": RayMethodRun(config=config, init_module=build_model(config.model), **common),
    }
    # one step per hospital first: allocation, and for Ray the actors' start (timed apart)
    startup = {name: _timed_advance(run, len(nodes))[0] for name, run in engines.items()}
    slices: dict[str, list[float]] = {name: [] for name in engines}
    per_cpu: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(1, args.rounds + 1):
        target = len(nodes) * (1 + args.steps * r // args.rounds)
        for name, run in engines.items():
            wall, cpu, steps = _timed_advance(run, target)
            slices[name].append(steps * args.batch_size / wall)
            per_cpu[name].append(steps * args.batch_size / cpu)
    engines["ray"].close()
    ratios = [ray / local for ray, local in zip(slices["ray"], slices["inprocess"], strict=True)]
    result = {
        "hospitals": args.hospitals, "steps_per_hospital": args.steps, "rounds": args.rounds,
        "batch_size": args.batch_size, "image_size": args.image_size,
        "cpus": os.cpu_count(), "startup_s": startup,
        "images_per_s": {name: statistics.median(v) for name, v in slices.items()},
        "slices_images_per_s": slices,
        # load-independent: images per CPU-second the engine used (driver + actors)
        "images_per_cpu_s": {name: statistics.median(v) for name, v in per_cpu.items()},
        "median_ratio_ray_vs_inprocess": statistics.median(ratios),
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("startup_s", "images_per_s", "images_per_cpu_s")}))
    print(f"ray / in-process: {result['median_ratio_ray_vs_inprocess']:.2f}x (median of slices); "
          f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}  -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
