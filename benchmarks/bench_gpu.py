"""One GPU, the full-size model: 8 hospitals' vmapped steps vs the centralized loop, projected.

    python -m benchmarks.bench_gpu --device cuda --image-size 224 --precision bf16

Measures the project's own training path (`ModelStack.gradients` on `HospitalTrainer` batches
gathered from uint8 site images, then a plain SGD update through the live views) for
DenseNet-121: `hospitals` models stepped as one vmapped computation, and one model on the
hospitals' pooled batch (`centralized_batch = "scaled"`: the same images per step). Prints
img/s of each, their ratio, peak GPU memory, and the projected wall time of the full NIH study
(every default method, `--epochs` passes over `--train-images`), with its assumptions.
Writes benchmarks/results/gpu_full_scale.json. `--device cpu --image-size 32 --steps 2` is the
smoke mode the tests run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_tools.labels import NUM_FINDINGS
from hospital_node.data.images import SiteImages
from hospital_node.devices import DeviceError, resolve_device
from hospital_node.simulation.config import DEFAULT_METHODS
from hospital_node.training.config import ModelConfig, TrainingConfig
from hospital_node.training.model import initial_model
from hospital_node.training.step import HospitalTrainer, ModelStack

DEFAULT_OUT = Path("benchmarks/results/gpu_full_scale.json")
# Images held by the 8 hospitals of the NIH release (112,120 minus the 22,268-image common
# test set, benchmarks/results/full_scale.json): an upper bound on one epoch's training images.
NIH_HOSPITAL_IMAGES = 89_852


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_gpu",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", help="torch device (cuda; cpu for smoke)")
    parser.add_argument("--architecture", default="densenet121", help="model.architecture")
    parser.add_argument("--image-size", type=int, default=224, help="training resolution (px)")
    parser.add_argument("--hospitals", type=int, default=8, help="models in the vmapped stack")
    parser.add_argument("--batch-size", type=int, default=16, help="per hospital")
    parser.add_argument("--images-per-hospital", type=int, default=256, help="uint8 site rows")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--channels-last", action="store_true", help="training.channels_last")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per phase")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="timed cap per phase")
    parser.add_argument("--epochs", type=float, default=10.0, help="projection: epochs")
    parser.add_argument("--train-images", type=int, default=NIH_HOSPITAL_IMAGES,
                        help="projection: training images per epoch")  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    return parser.parse_args(argv)


def make_trainers(args: argparse.Namespace, config: TrainingConfig, count: int) -> list:
    """`count` hospitals of random uint8 images and labels (the cache's storage type)."""
    rng = np.random.default_rng(0)
    shape = (args.images_per_hospital, 1, args.image_size, args.image_size)
    trainers = []
    for i in range(count):
        images = SiteImages(rng.integers(0, 256, size=shape, dtype=np.uint8))
        labels = torch.from_numpy((rng.random((shape[0], NUM_FINDINGS)) < 0.1).astype("float32"))
        trainers.append(HospitalTrainer.build(name=f"N{i + 1}", images=images, labels=labels,
                                              config=config))  # fmt: skip
    return trainers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, *, copies: int, batch_size: int) -> dict[str, Any]:
    """img/s of `copies` models stepped together on batches of `batch_size` each."""
    config = TrainingConfig(batch_size=batch_size, device=args.device, precision=args.precision,
                            channels_last=args.channels_last, positive_weighting=True)  # fmt: skip
    device = resolve_device(config.device, precision=config.precision)
    module = initial_model(ModelConfig(architecture=args.architecture), seed=0)
    stack = ModelStack.for_training(module, copies=copies, config=config)
    trainers = make_trainers(args, config, copies)
    nodes = list(range(copies))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float | None:
        grads = stack.gradients(nodes, trainers)
        with torch.no_grad():
            for view, (grad, _) in zip(stack.views, grads, strict=True):
                for name, tensor in view.items():
                    tensor.sub_(grad[name], alpha=0.01)
        return grads[0][1]

    for _ in range(args.warmup):
        step()
    synchronize(device)
    started, done, loss = time.perf_counter(), 0, None
    while done < args.steps and time.perf_counter() - started < args.max_seconds:
        loss = step()
        done += 1
    synchronize(device)
    elapsed = time.perf_counter() - started
    images = done * copies * batch_size
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"models": copies, "batch_per_model": batch_size, "steps": done,
            "seconds": round(elapsed, 3), "img_per_s": round(images / elapsed, 2),
            "peak_gpu_bytes": peak, "last_loss": loss}  # fmt: skip


def projection(args: argparse.Namespace, hospitals: dict, central: dict) -> dict[str, Any]:
    """Wall time of the full study: every default method, `epochs` passes over the images."""
    images = args.epochs * args.train_images
    federated = [m for m in DEFAULT_METHODS if m != "centralized"]
    seconds = images / central["img_per_s"] + len(federated) * images / hospitals["img_per_s"]
    return {
        "methods": list(DEFAULT_METHODS),
        "epochs": args.epochs,
        "train_images_per_epoch": args.train_images,
        "hours": round(seconds / 3600, 2),
        "assumptions": [
            f"{args.epochs:g} epochs over {args.train_images:,} training images per method",
            f"federated methods at the vmapped {args.hospitals}-hospital rate, centralized "
            "at its own rate on the pooled batch",
            "gradient steps and a plain SGD update only: exchanges, consensus duals, "
            "evaluation, checkpoints, learning-rate tuning and decoding not included",
            "one GPU, methods run one after another",
        ],
    }


def report(result: dict[str, Any]) -> str:
    hospitals, central, proj = result["hospitals"], result["centralized"], result["projection"]
    gib = 1024**3

    def peak(record: dict) -> str:
        value = record["peak_gpu_bytes"]
        return "n/a (not CUDA)" if value is None else f"{value / gib:.2f} GiB"

    lines = [
        f"{result['architecture']} at {result['image_size']} px, {result['precision']}, "
        f"channels_last={result['channels_last']}, device {result['device_name']}",
        f"{hospitals['models']} hospitals (vmapped): {hospitals['img_per_s']:.1f} img/s, "
        f"peak GPU memory {peak(hospitals)}",
        f"centralized (batch {central['batch_per_model']}): {central['img_per_s']:.1f} img/s, "
        f"peak GPU memory {peak(central)}",
        f"ratio hospitals / centralized: {result['ratio']:.3f}",
        f"projected full NIH study ({', '.join(proj['methods'])}; {proj['epochs']:g} epochs): "
        f"{proj['hours']:.2f} h",
        *(f"  assumes: {a}" for a in proj["assumptions"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device, precision=args.precision)
    except DeviceError as exc:
        print(f"bench_gpu: {exc}", file=sys.stderr)
        return 2
    if args.hospitals < 1 or args.steps < 1:
        print("bench_gpu: --hospitals and --steps must be >= 1", file=sys.stderr)
        return 2
    hospitals = measure(args, copies=args.hospitals, batch_size=args.batch_size)
    central = measure(args, copies=1, batch_size=args.batch_size * args.hospitals)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    result = {
        "architecture": args.architecture, "image_size": args.image_size,
        "precision": args.precision, "channels_last": args.channels_last,
        "device": str(device), "device_name": name or device.type, "torch": torch.__version__,
        "hospitals": hospitals, "centralized": central,
        "ratio": hospitals["img_per_s"] / central["img_per_s"],
        "peak_host_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }  # fmt: skip
    result["projection"] = projection(args, hospitals, central)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
