"""Calibrate phantom difficulty: train the compact CNN on phantoms, report AUC per finding.

Renders the default synthetic hospitals in memory (same label sampling, seeds and per-site noise
as `ecl-data synth`, no DICOM), pools their train splits, downsamples to 64 px, trains
hospital_node.training.model.build_model(ModelConfig()) with plain SGD (no momentum, as the
consensus
methods use) and BCE-with-logits, and evaluates per-finding AUC on the common test set.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.calibrate_phantom --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from data_tools.labels import COMMON_TEST_SITE, FINDINGS
from data_tools.phantom import PhantomConfig, render_phantom, sample_anatomy
from data_tools.synth import ImageJob, SynthConfig, plan_images, plan_sites
from hospital_node.training.model import ModelConfig, build_model

DEFAULT_OUT = Path("build/bench/calibrate_phantom.json")


def render_set(jobs: list[ImageJob], render_size: int, model_size: int) -> np.ndarray:
    """Render jobs at `render_size` (site noise included) and box-downsample to `model_size`."""
    factor = render_size // model_size
    out = np.empty((len(jobs), model_size, model_size), dtype=np.float32)
    for i, job in enumerate(jobs):
        config = PhantomConfig(size=render_size, difficulty=job.difficulty)
        anatomy = sample_anatomy(np.random.default_rng(job.anatomy_seed), config)
        rng = np.random.default_rng(job.image_seed)
        image = render_phantom(np.asarray(job.labels), anatomy, rng, config, job.profile.noise)
        out[i] = image.reshape(model_size, factor, model_size, factor).mean(axis=(1, 3))
    return out


def build_sets(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from the synth planner."""
    sites = 8
    per_site = math.ceil(args.train / 0.7 / sites)
    config = SynthConfig(
        sites=sites,
        per_site=per_site,
        test_size=args.test,
        difficulty=args.difficulty,
        seed=args.seed,
    )
    train_jobs, test_jobs = [], []
    for plan in plan_sites(config):
        for job, split in plan_images(plan, config, Path("unused")):
            if plan.name == COMMON_TEST_SITE:
                test_jobs.append(job)
            elif split == "train":
                train_jobs.append(job)
    x_train = render_set(train_jobs, args.render_size, args.model_size)
    x_test = render_set(test_jobs, args.render_size, args.model_size)
    y_train = np.array([j.labels for j in train_jobs], dtype=np.float32)
    y_test = np.array([j.labels for j in test_jobs], dtype=np.float32)
    return x_train, y_train, x_test, y_test


def train(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> nn.Module:
    """Plain SGD, BCE-with-logits, `args.steps` mini-batches of `args.batch` drawn by epoch."""
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.0)
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(args.seed)
    xt, yt = torch.from_numpy(x[:, None]), torch.from_numpy(y)
    order, cursor = rng.permutation(len(x)), 0
    model.train()
    for step in range(args.steps):
        if cursor + args.batch > len(order):
            order, cursor = rng.permutation(len(x)), 0
        idx = torch.from_numpy(order[cursor : cursor + args.batch])
        cursor += args.batch
        optimizer.zero_grad()
        loss = loss_fn(model(xt[idx]), yt[idx])
        loss.backward()
        optimizer.step()
        if (step + 1) % 200 == 0:
            print(f"  step {step + 1:5d}  loss {loss.item():.4f}", flush=True)
    return model


@torch.no_grad()
def per_finding_auc(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """AUC per finding on (x, y); None where the test set has a single class."""
    model.eval()
    scores = torch.cat(
        [model(torch.from_numpy(x[i : i + 256, None])) for i in range(0, len(x), 256)]
    )
    scores = scores.numpy()
    aucs: dict[str, float | None] = {}
    for k, finding in enumerate(FINDINGS):
        single = y[:, k].min() == y[:, k].max()
        aucs[finding] = None if single else float(roc_auc_score(y[:, k], scores[:, k]))
    return aucs


def parse_args() -> argparse.Namespace:
    d = SynthConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--difficulty",
        type=float,
        default=d.difficulty,
        help="phantom difficulty (default: %(default)s)",
    )
    p.add_argument(
        "--train",
        type=int,
        default=3000,
        help="about this many train images (default: %(default)s)",
    )
    p.add_argument(
        "--test", type=int, default=1000, help="common test images (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=1500, help="SGD steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--render-size", type=int, default=128, help="phantom px (default: %(default)s)")
    p.add_argument(
        "--model-size", type=int, default=64, help="network input px (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)"
    )
    return p.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = build_sets(args)
    rendered = time.perf_counter()
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    print(
        f"rendered {len(x_train)} train + {len(x_test)} test images in {rendered - started:.0f} s"
    )
    model = train(x_train, y_train, args)
    trained = time.perf_counter()
    aucs = per_finding_auc(model, x_test, y_test)
    valid = [a for a in aucs.values() if a is not None]
    print(f"\n{'finding':<20} {'AUC':>6} {'train+':>7} {'test+':>6}")
    for k, finding in enumerate(FINDINGS):
        auc = aucs[finding]
        shown = "  n/a" if auc is None else f"{auc:.3f}"
        print(
            f"{finding:<20} {shown:>6} {int(y_train[:, k].sum()):>7} {int(y_test[:, k].sum()):>6}"
        )
    mean_auc = float(np.mean(valid))
    print(f"{'mean':<20} {mean_auc:.3f}\ntraining {trained - rendered:.0f} s ({args.steps} steps)")
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "auc": aucs,
        "mean_auc": mean_auc,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "render_seconds": rendered - started,
        "train_seconds": trained - rendered,
        "machine": platform.platform(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
