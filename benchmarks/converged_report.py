"""Tables and curves of the converged-budget study (benchmarks/bench_converged.py)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def collect(runs: dict[str, Any], interval: str) -> dict[str, dict[str, list]]:
    """method -> {metric: [one value per seed]} over the runs of one exchange interval."""
    table: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for key, run in sorted(runs.items()):
        if not key.startswith(f"{interval}/"):
            continue
        for method, entry in run["methods"].items():
            row = table[method]
            for metric in ("mean_auc", "absent_findings_auc", "min_site_auc"):
                if entry.get(metric) is not None:
                    row[metric].append(entry[metric])
            residual = [v for _, v in entry.get("residual_curve", [])]
            if len(residual) >= 2 and method != "centralized":
                row["residual"].append((residual[0], residual[-1]))
    return table


def budget_line(results: dict[str, Any]) -> str:
    """Where the budget came from: `--steps` if given, else the plateau stage's S."""
    fixed = int(results.get("settings", {}).get("steps", "0"))
    if fixed:
        return f"Budget: {fixed:,} local steps per hospital, fixed with --steps."
    plateau = results.get("plateau", {})
    return (
        f"Budget: {plateau.get('converged_steps')} local steps per hospital (plateau of the "
        f"tuned centralized reference, searched up to {plateau.get('max_steps')})."
    )


def markdown(results: dict[str, Any]) -> str:
    """One table per (split, interval): mean +- sd over seeds of each method."""
    lines = ["# Converged-budget study", ""]
    lines.append(budget_line(results))
    for split, runs in results.get("runs", {}).items():
        tuned = ", ".join(results.get("tuned", {}).get(split, []))
        lines += ["", f"Tuned learning rates ({split}): {tuned}"]
        for interval in ("i8", "i1"):
            table = collect(runs, interval)
            if not table:
                continue
            seeds = max(len(r["mean_auc"]) for r in table.values())
            lines += [
                "",
                f"## {split} split, exchange interval {interval[1:]} ({seeds} seeds)",
                "",
                "| method | mean AUC | never-seen findings | worst site | residual first -> last |",
                "|---|---:|---:|---:|---:|",
            ]
            for method, row in table.items():
                residual = row.get("residual", [])
                res = (
                    f"{statistics.mean(a for a, _ in residual):.3f} -> "
                    f"{statistics.mean(b for _, b in residual):.3f}"
                    if residual
                    else "-"
                )
                lines.append(
                    f"| {method} | {_mean_sd(row['mean_auc'])} | "
                    f"{_mean_sd(row['absent_findings_auc'])} | {_mean_sd(row['min_site_auc'])} "
                    f"| {res} |"
                )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Mean AUC on the common test set vs local steps, mean over seeds, one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(results.get("runs", {}))
    if not splits:
        return
    fig, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 4.2), dpi=120)
    axes = axes if len(splits) > 1 else [axes]
    for ax, split in zip(axes, splits, strict=True):
        curves: dict[str, list] = defaultdict(list)
        for key, run in results["runs"][split].items():
            for method, entry in run["methods"].items():
                curves[f"{method} ({key.split('/')[0]})"].append(dict(entry["test_curve"]))
        for label, seeds in sorted(curves.items()):
            steps = sorted(set.intersection(*(set(c) for c in seeds)))
            values = [statistics.mean(c[s] for c in seeds) for s in steps]
            ax.plot(steps, values, marker="o", markersize=2, label=label,
                    linestyle="--" if "(i1)" in label else "-")  # fmt: skip
        ax.set_title(f"{split} split")
        ax.set_xlabel("local steps per hospital")
        ax.set_ylabel("mean AUC, common test subset")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "converged.md").write_text(markdown(results))
    plot(results, out / "converged.png")
