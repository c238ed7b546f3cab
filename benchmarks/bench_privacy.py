"""Accuracy cost of differential privacy: ECL-PDMM's mean AUC vs epsilon, exchange DP and DP-SGD.

Run: `.venv/bin/python -m benchmarks.bench_privacy [--steps 100] [--per-site 150] ...`;
writes build/bench/privacy.json and prints a Markdown table. Every run is a real `ecl-sim`
run (same data, model, initialisation, schedule and seed; only the privacy flags differ);
the AUC is the mean over hospitals of the macro AUC on the common test set. On demand only:
7 runs, 2 min 47 s with `--steps 100` on 2 idle cores (19 minutes on a heavily loaded,
shared machine). The defaults shrink the simulation (easier
phantoms, 24 px, 150 images per site, 40 steps) so that it learns something in that time;
8 hospitals on a ring, batch 16 and learning rate 0.1 as in the default simulation, but an
exchange every 4 steps (default 1): a quarter of the releases, so less noise per release at a
given epsilon. Results and their reading: docs/privacy.md, "Measured cost".
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from hospital_node.simulation.cli import main as ecl_sim
from hospital_node.store.reader import StoreReader

OUT = Path("build/bench/privacy.json")
WORK = Path("build/bench/privacy")
EPSILONS = (1.0, 4.0, 8.0)
GOAL = 0.97  # the client's target: AUC at epsilon 8 >= 0.97 x the non-private AUC


def _common_args(args: argparse.Namespace) -> list[str]:
    return [
        "--quiet", "--methods", "ecl-pdmm", "--steps", str(args.steps), "--seed", "0",
        "--set", f"synth.per_site={args.per_site}",
        "--set", f"synth.test_size={args.test_size}",
        "--set", f"synth.size={args.synth_size}",
        "--set", f"synth.difficulty={args.difficulty}",
        "--set", f"data.image_size={args.image_size}",
        "--set", f"evaluation.every={args.steps}",
        "--set", f"training.checkpoint_every={args.steps}",
        "--set", "evaluation.bootstrap=20",
        "--set", f"network.exchange_interval={args.exchange_interval}",
        "--set", f"consensus.learning_rate={args.learning_rate}",
    ]  # fmt: skip


def _run(name: str, dp: list[str], args: argparse.Namespace) -> dict:
    """One ecl-sim run; its mean AUC, largest epsilon over sites and privacy details."""
    out = WORK / name
    data = args.data or WORK / "data"
    source = ["--data", str(data)] if (data / "common_test").is_dir() else []
    report_path = out / "report.json"
    started = time.perf_counter()
    code = ecl_sim(["--out", str(out), *source, *_common_args(args), *dp,
                    "--report-json", str(report_path)])  # fmt: skip
    if code != 0:
        raise RuntimeError(f"ecl-sim failed for {name} (exit {code})")
    if not source:  # the first run generated the synthetic set: move it for the others
        (out / "data").rename(data)
    report = json.loads(report_path.read_text())
    entry = report["methods"]["ecl-pdmm"]
    with StoreReader.open_readonly(out / "results.sqlite") as reader:
        privacy = reader.privacy(report["run_id"])
    row = {
        "name": name,
        "mean_auc": entry["mean_auc"],
        "epsilon": entry.get("epsilon"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if not privacy.empty:
        row |= {
            "noise_multiplier_mean": float(privacy["noise_multiplier"].mean()),
            "releases_or_steps_mean": float(privacy["releases"].mean()),
            "sites_stopped_sending": int(privacy["exhausted"].sum()),
        }
    return row


def _gain_share(auc: float, baseline: float) -> float:
    """Share of the non-private gain over chance (AUC 0.5) that a private run keeps."""
    return (auc - 0.5) / (baseline - 0.5)


def _table(rows: list[dict], baseline: float) -> str:
    lines = [
        "| setting | epsilon (max over sites) | sigma (mean) | mean AUC | x non-private "
        "| share of gain over chance |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        eps = "inf" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        sigma = row.get("noise_multiplier_mean")
        lines.append(
            f"| {row['name']} | {eps} | {'-' if sigma is None else f'{sigma:.3g}'} | "
            f"{row['mean_auc']:.3f} | {row['mean_auc'] / baseline:.3f} | "
            f"{_gain_share(row['mean_auc'], baseline):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40, help="local steps per hospital")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--data", type=Path, help="an existing site tree (default: generated)")
    parser.add_argument("--per-site", type=int, default=150, help="mean images per hospital")
    parser.add_argument("--test-size", type=int, default=300, help="common test images")
    parser.add_argument("--synth-size", type=int, default=64, help="DICOM matrix generated")
    parser.add_argument("--image-size", type=int, default=24, help="training resolution")
    parser.add_argument("--difficulty", type=float, default=0.1, help="phantom difficulty")
    parser.add_argument("--exchange-interval", type=float, default=4.0)
    parser.add_argument("--exchange-clip", type=float, default=0.5, help="C per release")
    parser.add_argument("--dpsgd-clip", type=float, default=1.0, help="C per example")
    parser.add_argument("--out", type=Path, default=OUT, help="where the JSON goes")
    args = parser.parse_args(argv)
    for old in WORK.glob("*/results.sqlite"):  # each run starts from an empty store
        old.unlink()
    rows = [_run("non-private", [], args)]
    for epsilon in EPSILONS:
        for mode, clip in (("exchange", args.exchange_clip), ("dpsgd", args.dpsgd_clip)):
            dp = ["--dp", mode, "--epsilon", str(epsilon), "--clip", str(clip)]
            rows.append(_run(f"{mode} eps={epsilon:g}", dp, args))
    baseline = rows[0]["mean_auc"]
    at_goal = {r["name"]: r["mean_auc"] / baseline for r in rows if "eps=8" in r["name"]}
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        "ratio_at_epsilon_8": at_goal,
        "gain_share_at_epsilon_8": {
            r["name"]: _gain_share(r["mean_auc"], baseline) for r in rows if "eps=8" in r["name"]
        },
        "goal": f"mean AUC at epsilon 8 >= {GOAL} x non-private",
        "goal_met": {name: ratio >= GOAL for name, ratio in at_goal.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False))
    print(_table(rows, baseline))
    print(f"\nGoal {result['goal']}: " + ", ".join(
        f"{k} {v:.3f}" for k, v in at_goal.items()))  # fmt: skip
    print(f"Wrote {args.out}")
    return 0 if all(math.isfinite(r["mean_auc"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
