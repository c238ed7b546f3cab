"""Cost of a node's periodic evaluation: AUCs only vs a full review (bootstrap CIs, ROC,
calibration, subgroups), against the cost of a training step; amortised per step.

Run: `.venv/bin/python -m benchmarks.bench_review [--sizes 50,200,1000,2000] [--repeats 3]`;
writes benchmarks/results/review_cost.json and prints a Markdown table. Everything is
measured in this one run, on this machine, with the node's own code paths: the compact model
(`[model]` default) at 64 px, batch 16 (`[training]` defaults), 14 findings, 200 patient
resamples (`[evaluation] bootstrap`), three subgroup attributes. The amortised cost per step
uses the node defaults: an evaluation every 200 steps (`[evaluation] every`), a full review
every 5th (`ci_every`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from data_tools.labels import FINDINGS
from hospital_node.evaluation.metrics import evaluate_scores
from hospital_node.evaluation.review import review_scores
from hospital_node.training.config import ModelConfig, TrainingConfig
from hospital_node.training.model import initial_model
from hospital_node.training.step import HospitalTrainer, ModelStack

OUT = Path("benchmarks/results/review_cost.json")
EVERY, CI_EVERY, BOOTSTRAP, IMAGE_SIZE = 200, 5, 200, 64


def _best_of(repeats: int, call) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def _test_set(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str], dict]:
    y = (rng.random((n, len(FINDINGS))) < 0.1).astype(np.int64)
    patients = [f"P{i * 100 // 115}" for i in range(n)]  # ~15 % follow-up images
    groups = {
        "sex": rng.choice(["F", "M"], n).tolist(),
        "age_band": rng.choice(["18-39", "40-59", "60-79", "80+"], n).tolist(),
        "view_position": rng.choice(["PA", "AP"], n).tolist(),
    }
    return y, patients, groups


def _step_seconds(stack: ModelStack, trainer: HospitalTrainer, repeats: int) -> float:
    """One local training step (forward, backward, update) of the node's model."""
    params = stack.views[0]

    def step() -> None:
        ((grads, _),) = stack.gradients([0], [trainer])
        with torch.no_grad():
            for name, grad in grads.items():
                params[name].sub_(0.01 * grad)

    step()  # warm-up
    return _best_of(repeats, lambda: [step() for _ in range(10)]) / 10


def _row(n: int, stack: ModelStack, rng: np.random.Generator, repeats: int, step_s: float) -> dict:
    """Times of one test-set size: forward pass, AUCs only, full review; costs per step."""
    y, patients, groups = _test_set(n, rng)
    images = torch.rand(n, 1, IMAGE_SIZE, IMAGE_SIZE)
    predict = _best_of(repeats, lambda: stack.predict_node(0, images))
    probs = stack.predict_node(0, images).numpy()
    plain = _best_of(repeats, lambda: evaluate_scores(y, probs, patients, with_ci=False))
    full = _best_of(
        repeats,
        lambda: review_scores(
            y, probs, patients, groups=groups, rng=np.random.default_rng(1), n_boot=BOOTSTRAP
        ),  # fmt: skip
    )
    metrics = ((CI_EVERY - 1) * plain + full) / CI_EVERY / EVERY  # without the forward pass
    per_step = predict / EVERY + metrics
    every_time = (predict + full) / EVERY  # CIs at every evaluation (ci_every = 1)
    return {
        "test_images": n, "predict_s": round(predict, 4), "aucs_only_s": round(plain, 4),
        "full_review_s": round(full, 4),
        "evaluation_cost_per_step_s": round(per_step, 5),
        "cost_vs_training_step": round(per_step / step_s, 4),
        "metrics_cost_vs_training_step": round(metrics / step_s, 4),
        "ci_every_evaluation_vs_training_step": round(every_time / step_s, 4),
    }  # fmt: skip


def measure(sizes: list[int], repeats: int) -> dict:
    rng = np.random.default_rng(0)
    stack = ModelStack(initial_model(ModelConfig(), seed=0), copies=1, device="cpu")
    train_images = torch.rand(256, 1, IMAGE_SIZE, IMAGE_SIZE)
    train_labels = (torch.rand(256, len(FINDINGS)) < 0.1).float()
    trainer = HospitalTrainer.build(name="bench", images=train_images, labels=train_labels,
                                    config=TrainingConfig(), dpsgd=None)  # fmt: skip
    step_s = _step_seconds(stack, trainer, repeats)
    rows = [_row(n, stack, rng, repeats, step_s) for n in sizes]
    return {
        "machine": "2 CPU cores, torch threads = " + str(torch.get_num_threads()),
        "model": "compact, 64 px", "training_step_s": round(step_s, 4),
        "settings": {"every": EVERY, "ci_every": CI_EVERY, "bootstrap": BOOTSTRAP},
        "rows": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,1000,2000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = measure([int(s) for s in args.sizes.split(",")], args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"training step: {result['training_step_s'] * 1000:.1f} ms (batch 16, compact, 64 px)")
    print("| test images | forward pass | AUCs only | full review | per step, all | vs step | "
          "metrics only vs step | CIs every time vs step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['test_images']} | {r['predict_s']:.3f} s | {r['aucs_only_s']:.3f} s | "
              f"{r['full_review_s']:.3f} s | {r['evaluation_cost_per_step_s'] * 1000:.2f} ms | "
              f"{100 * r['cost_vs_training_step']:.1f} % | "
              f"{100 * r['metrics_cost_vs_training_step']:.1f} % | "
              f"{100 * r['ci_every_evaluation_vs_training_step']:.1f} % |")  # fmt: skip
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
