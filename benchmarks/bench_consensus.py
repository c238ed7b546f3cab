"""Cost of consensus next to training: ECL step vs DenseNet-121 step, wire encode/decode MB/s."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from consensus.algorithms import make_algorithm
from consensus.config import ConsensusConfig
from consensus.schema import MessageSchema
from consensus.wire import (
    Message,
    MessageGate,
    MessageHeader,
    decode_message,
    encode_message,
)
from hospital_node.training.model import ModelConfig, build_model
from hospital_node.training.step import ModelStack

DEFAULT_OUT = Path("build/bench/consensus.json")
GOAL_RATIO = 0.03  # consensus work per step <= 3% of one training step


def median_seconds(run: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `run` over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(model: nn.Module, *, batch: int, image_size: int) -> Callable[[], None]:
    """One forward/backward pass of a multi-label batch (BCE over 14 findings)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, image_size, image_size, generator=generator)
    labels = (torch.rand(batch, 14, generator=generator) < 0.2).float()
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()

    return step


def consensus_steps(model: nn.Module, *, fused: bool = True) -> dict[str, Callable[[], None]]:
    """ECL-PDMM at a ring node on the model's gradients: local_step, outgoing to 2 peers, both.

    The node's parameters as a hospital node holds them: a ModelStack of one model (one flat
    buffer). `fused=False` runs the pass-per-term reference path of the same update.
    """
    stack = ModelStack(model, copies=1)
    params = stack.views[0]
    named = dict(model.named_parameters())
    grads = {name: named[name].grad.detach().clone() for name in params}  # type: ignore[union-attr]
    config = ConsensusConfig(method="ecl-pdmm", learning_rate=0.01)
    algorithm = make_algorithm(
        config, node="N2", neighbours=["N1", "N3"], params=params, node_order=["N1", "N2", "N3"]
    )
    algorithm._state.fused = fused  # the benchmark's before/after switch (FlatState.fused)

    def local_step() -> None:
        algorithm.local_step(grads)

    def outgoing() -> None:
        algorithm.outgoing("N1")
        algorithm.outgoing("N3")

    def both() -> None:
        local_step()
        outgoing()

    return {"local_step": local_step, "outgoing": outgoing, "step": both}


def interleaved_medians(runs: dict[str, Callable[[], None]], *, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, timed in turn (A B A B ...) so load hits all alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def wire_throughput(model: nn.Module, *, repeats: int) -> dict[str, float]:
    """MB/s of encode, decode, and gate.accept (decode + every check) for one dual message."""
    tensors = {f"y/{n}": p.detach().clone() for n, p in model.named_parameters()}
    schema = MessageSchema.from_tensors("ecl-pdmm", tensors)
    header = MessageHeader(
        sender="N1", receiver="N2", method="ecl-pdmm", schema_hash=schema.digest, sequence=1
    )
    message = Message(header=header, tensors=tensors)
    data = encode_message(message)
    gates = iter([MessageGate(node="N2", peers=["N1"], schema=schema) for _ in range(repeats + 1)])
    megabytes = len(data) / 1e6
    times = {
        "encode": median_seconds(lambda: encode_message(message), repeats=repeats),
        "decode": median_seconds(lambda: decode_message(data), repeats=repeats),
        "gate_accept": median_seconds(lambda: next(gates).accept(data), repeats=repeats),
    }
    result = {"message_mb": megabytes, "parameters": sum(t.numel() for t in tensors.values())}
    result.update({f"{k}_mb_per_s": megabytes / t for k, t in times.items()})
    result.update({f"{k}_ms": 1e3 * t for k, t in times.items()})
    return result


def run(*, threads: int, repeats: int, batch: int, image_size: int) -> dict[str, Any]:
    """All figures from one process, so the ratio compares like with like.

    The load average goes into the result: on a shared machine other processes slow the
    many small ECL kernels and the large convolutions differently, so read the ratio
    together with it.
    """
    load_before = os.getloadavg()[0]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="densenet121"))
    train = training_step(model, batch=batch, image_size=image_size)
    train_s = median_seconds(train, repeats=repeats)  # also leaves .grad for the ECL step
    fused, reference = consensus_steps(model), consensus_steps(model, fused=False)
    ecl_repeats = max(repeats, 10)
    medians = interleaved_medians(
        {"fused": fused["step"], "reference": reference["step"]}, repeats=ecl_repeats
    )
    ecl_s = medians["fused"]
    local_s = median_seconds(fused["local_step"], repeats=ecl_repeats)
    outgoing_s = median_seconds(fused["outgoing"], repeats=ecl_repeats)
    return {
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "model": "densenet121 (GroupNorm)",
        "batch": batch,
        "image_size": image_size,
        "train_step_ms": 1e3 * train_s,
        "ecl_step_ms": 1e3 * ecl_s,
        "ecl_local_step_ms": 1e3 * local_s,
        "ecl_outgoing_2_peers_ms": 1e3 * outgoing_s,
        "ecl_over_train": ecl_s / train_s,
        "ecl_reference_step_ms": 1e3 * medians["reference"],
        "reference_over_train": medians["reference"] / train_s,
        "speedup_fused_vs_reference": medians["reference"] / ecl_s,
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ecl_s / train_s <= GOAL_RATIO,
        "wire": wire_throughput(model, repeats=repeats),
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }


def table(result: dict[str, Any]) -> str:
    wire = result["wire"]
    rows = [
        ("threads", f"{result['threads']}"),
        ("load average (start, end)", ", ".join(f"{x:.1f}" for x in result["load_average_1min"])),
        ("train step (fwd+bwd)", f"{result['train_step_ms']:.1f} ms"),
        ("ECL-PDMM step + 2 outgoing", f"{result['ecl_step_ms']:.2f} ms"),
        ("  of which local_step", f"{result['ecl_local_step_ms']:.2f} ms"),
        ("  of which 2 x outgoing", f"{result['ecl_outgoing_2_peers_ms']:.2f} ms"),
        ("ratio (goal <= 3%)", f"{100 * result['ecl_over_train']:.2f} %"),
        ("reference path (unfused)", f"{result['ecl_reference_step_ms']:.2f} ms"),
        ("  its ratio", f"{100 * result['reference_over_train']:.2f} %"),
        ("fused speed-up", f"{result['speedup_fused_vs_reference']:.2f}x"),
        ("message size", f"{wire['message_mb']:.1f} MB ({wire['parameters']:,} params)"),
        ("encode", f"{wire['encode_mb_per_s']:.0f} MB/s ({wire['encode_ms']:.1f} ms)"),
        ("decode", f"{wire['decode_mb_per_s']:.0f} MB/s ({wire['decode_ms']:.1f} ms)"),
        (
            "gate.accept",
            f"{wire['gate_accept_mb_per_s']:.0f} MB/s ({wire['gate_accept_ms']:.1f} ms)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="one run per count, in turn"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    results = []
    for threads in args.threads:
        results.append(
            run(threads=threads, repeats=args.repeats, batch=args.batch, image_size=args.image_size)
        )
        print(table(results[-1]) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
