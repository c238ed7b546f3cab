"""Converged-budget study: every method tuned alike, trained to the centralized plateau, 3 seeds.

8-hospital ring on the phantom set at 32 px; the default split (each hospital lacks 5 of 14
findings) and a severe one (lacks 9); methods centralized, local, gossip, gradient tracking,
FedAvg, ECL-PDMM and ECL-ISVR (PDMM and ADMM dual); an exchange about every 8 local steps per
edge (the paper's setting) for all, plus interval 1 for the best ECL variant and gossip.
The recipe is the same for every method: SGD with heavy-ball momentum, a cosine decay, the
learning rate chosen per method by `ecl-sim --tune` on the hospitals' pooled validation
splits (the test sets are read only by the reported runs).

Stages, each resumable (a stopped study continues where it was; every ecl-sim run is its own
folder under --work, results are appended to --out as they come):
  plateau  the tuned centralized reference over --max-steps: where its validation AUC gains
           less than 0.005 over the last quarter of the budget is the converged budget S
  tune     `ecl-sim --tune` at S per split (seed 0, interval 8): choices + the seed-0 runs
  runs     seeds 1.. with the tuned choices; interval 1 for the best ECL variant and gossip
  report   JSON + Markdown table (mean +- sd over seeds) + PNG of mean AUC vs steps

    python -m benchmarks.bench_converged                      # everything, in order
    python -m benchmarks.bench_converged --stage plateau      # one stage
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.converged_report import write_report
from hospital_node.store.reader import StoreReader

WORK = Path("build/bench/converged")
OUT = Path("benchmarks/results/converged")
SPLITS = {"default": 5, "severe": 9}  # findings each hospital never sees
METHODS = (
    "centralized", "local", "gossip", "gradient-tracking", "fedavg", "ecl-pdmm",
    "ecl-isvr-pdmm", "ecl-isvr-admm",
)  # fmt: skip
ECL_VARIANTS = ("ecl-pdmm", "ecl-isvr-pdmm", "ecl-isvr-admm")
PLATEAU_GAIN = 0.005


def recipe(args: argparse.Namespace) -> list[str]:
    """The settings every method shares (only the learning rate is tuned per method)."""
    return [
        "--set", f"data.image_size={args.image_size}",
        "--set", f"consensus.momentum={args.momentum}",
        "--set", "consensus.lr_schedule=cosine",
        "--set", f"consensus.learning_rate={args.learning_rates[1]}",
        "--set", f"consensus.min_learning_rate={args.learning_rates[1] * args.floor}",
        "--set", f"tune.learning_rates={','.join(str(r) for r in args.learning_rates)}",
        "--set", f"tune.budget_fraction={args.tune_fraction}",
        "--set", "evaluation.bootstrap=50",
        "--set", f"training.threads={args.threads}",
    ]  # fmt: skip


def ecl_sim(out: Path, data: Path, extra: list[str]) -> dict[str, Any]:
    """One `ecl-sim` run in its own process (resumed if it stopped half-way); its report."""
    report = out / "report.json"
    if report.is_file():
        return json.loads(report.read_text())
    # a started run resumes from its checkpoints (its settings are in its store); a study
    # stopped while tuning starts again and the tuning itself skips the finished trials
    resume = ["--resume"] if _has_run(out) else []
    command = [
        sys.executable,
        "-m",
        "hospital_node.simulation.cli",
        "--out",
        str(out),
        "--data",
        str(data),
        "--quiet",
        "--report-json",
        str(report),
        *resume,
        *extra,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True)  # noqa: S603 (our own CLI)
    result = json.loads(report.read_text())
    result["study_seconds"] = round(time.perf_counter() - started, 1)
    report.write_text(json.dumps(result))
    return result


def _has_run(out: Path) -> bool:
    store = out / "results.sqlite"
    if not store.is_file():
        return False
    with StoreReader.open_readonly(store) as reader:
        return not reader.list_runs().empty


def ensure_data(work: Path, split: str, args: argparse.Namespace) -> Path:
    """The phantom set of one split, generated once (8 hospitals, 300 images each)."""
    from data_tools.synth import SynthConfig, generate_dataset

    data = work / f"data-{split}"
    if not (data / "common_test" / "labels.csv").is_file():
        synth = SynthConfig(
            per_site=args.per_site, test_size=args.test_size, size=64,
            missing_per_site=SPLITS[split], seed=args.data_seed,
            min_sites_present=2,  # 8 hospitals lacking 9 of 14 findings: some at 2 only
        )  # fmt: skip
        generate_dataset(synth, data, progress=True)
    return data


def curve(out: Path, method: str, metric: str) -> list[tuple[int, float]]:
    """(step, mean over sites) of a metric of one run (e.g. val_auc)."""
    with StoreReader.open_readonly(out / "results.sqlite") as reader:
        run_id = str(reader.list_runs().iloc[0]["run_id"])
        rows = reader.metrics(run_id, names=[metric], method=method)
    means = rows.groupby("step")["value"].mean()
    return [(int(s), float(v)) for s, v in means.items()]


def plateau_step(points: list[tuple[int, float]], gain: float = PLATEAU_GAIN) -> int | None:
    """The smallest budget S of the curve whose value at S is < `gain` above its value at 3S/4."""
    values = dict(points)
    for step, value in points:
        earlier = [v for s, v in points if s <= 0.75 * step]
        if earlier and value - earlier[-1] < gain and step >= 4 * min(values):
            return step
    return None


def stage_plateau(args: argparse.Namespace, work: Path, results: dict) -> None:
    """The tuned centralized reference over the longest budget; its plateau is S."""
    data = ensure_data(work, "default", args)
    every = max(1, args.max_steps // 16)
    run = ecl_sim(work / "plateau", data, [
        "--methods", "centralized", "--tune", "--steps", str(args.max_steps), "--seed", "0",
        "--set", f"evaluation.every={every}", "--set", f"training.checkpoint_every={every}",
        "--set", "network.exchange_interval=8", *recipe(args),
    ])  # fmt: skip
    points = curve(work / "plateau", "centralized", "val_auc")
    step = plateau_step(points)
    results["plateau"] = {
        "max_steps": args.max_steps, "val_auc_curve": points, "converged_steps": step,
        "test_mean_auc": run["methods"]["centralized"]["mean_auc"],
        "per_method": run["config"].get("per_method", []),
    }  # fmt: skip


def budget(args: argparse.Namespace, results: dict) -> int:
    if args.steps:
        return args.steps
    step = results.get("plateau", {}).get("converged_steps")
    if step is None:
        raise SystemExit("no plateau in --max-steps yet: run --stage plateau with more steps")
    return int(step)


def run_args(args: argparse.Namespace, steps: int, seed: int, interval: int) -> list[str]:
    every = max(1, steps // 10)
    return [
        "--steps", str(steps), "--seed", str(seed),
        "--set", f"network.exchange_interval={interval}",
        "--set", f"evaluation.every={every}", "--set", f"training.checkpoint_every={every}",
        *recipe(args),
    ]  # fmt: skip


def stage_tune(args: argparse.Namespace, work: Path, results: dict) -> None:
    """Per split: `ecl-sim --tune` (seed 0, interval 8), which also gives the seed-0 runs."""
    steps = budget(args, results)
    for split in args.splits:
        data = ensure_data(work, split, args)
        out = work / split / "i8" / "s0"
        report = ecl_sim(out, data, ["--methods", ",".join(args.methods), "--tune",
                                     *run_args(args, steps, 0, 8)])  # fmt: skip
        results.setdefault("tuned", {})[split] = report["config"]["per_method"]
        results.setdefault("runs", {}).setdefault(split, {})["i8/s0"] = summarise(out, report)


def best_ecl(results: dict, split: str) -> str:
    runs = results["runs"][split]
    means = {
        m: sum(r["methods"][m]["mean_auc"] for r in runs.values() if m in r["methods"])
        for m in ECL_VARIANTS
        if any(m in r["methods"] for r in runs.values())
    }
    return max(means, key=means.get)


def stage_runs(args: argparse.Namespace, work: Path, results: dict) -> None:
    """The remaining seeds at interval 8, then interval 1 for the best ECL and gossip."""
    steps = budget(args, results)
    for split in args.splits:
        data = ensure_data(work, split, args)
        tuned = ",".join(results["tuned"][split])
        for seed in args.seeds[1:]:
            out = work / split / "i8" / f"s{seed}"
            extra = ["--methods", ",".join(args.methods), "--set", f"per_method={tuned}"]
            report = ecl_sim(out, data, [*extra, *run_args(args, steps, seed, 8)])
            results["runs"][split][f"i8/s{seed}"] = summarise(out, report)
            save(results, args.out)
        pair = (best_ecl(results, split), "gossip")
        for seed in args.seeds:
            out = work / split / "i1" / f"s{seed}"
            extra = ["--methods", ",".join(pair), "--set", f"per_method={tuned}"]
            report = ecl_sim(out, data, [*extra, *run_args(args, steps, seed, 1)])
            results["runs"][split][f"i1/s{seed}"] = summarise(out, report)
            save(results, args.out)


def summarise(out: Path, report: dict) -> dict[str, Any]:
    """What the table and plot need of one run: per method AUCs, residual and AUC curves."""
    methods = {}
    for method, entry in report["methods"].items():
        methods[method] = {
            "mean_auc": entry["mean_auc"],
            "absent_findings_auc": entry["absent_findings_auc"],
            "min_site_auc": entry["min_site_auc"],
            "test_curve": curve(out, method, "mean_auc_common"),
            "residual_curve": curve(out, method, "consensus_residual"),
        }
    return {"methods": methods, "seconds": report.get("study_seconds")}


def save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / "converged.json.tmp"
    temporary.write_text(json.dumps(results, indent=1))
    temporary.replace(out / "converged.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("all", "plateau", "tune", "runs", "report"),
                        default="all")  # fmt: skip
    parser.add_argument("--work", type=Path, default=WORK, help="ecl-sim run folders")
    parser.add_argument("--out", type=Path, default=OUT, help="JSON, Markdown and PNG")
    parser.add_argument("--splits", type=lambda s: s.split(","), default=list(SPLITS))
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 1, 2])  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=4000, help="plateau search budget")
    parser.add_argument("--steps", type=int, default=0, help="override the measured budget S")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--per-site", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=600)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--learning-rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[0.003, 0.01, 0.03], help="the tuning grid (3 values)")  # fmt: skip
    parser.add_argument("--floor", type=float, default=0.05, help="cosine floor / peak")
    parser.add_argument("--tune-fraction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.out / "converged.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["settings"] = {k: str(v) for k, v in vars(args).items()}
    stages = ("plateau", "tune", "runs", "report") if args.stage == "all" else (args.stage,)
    for stage in stages:
        if stage == "plateau" and not args.steps:
            stage_plateau(args, args.work, results)
        elif stage == "tune":
            stage_tune(args, args.work, results)
        elif stage == "runs":
            stage_runs(args, args.work, results)
        elif stage == "report":
            write_report(results, args.out)
        save(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
