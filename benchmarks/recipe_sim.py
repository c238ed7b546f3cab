"""`ecl-sim --methods centralized` on one split: the product's own training, read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.recipe_data import PooledSplit, powered_mean
from hospital_node.simulation.cli import STORE_NAME
from hospital_node.store.reader import StoreReader

# The settings of the run worth quoting beside its numbers (the rest: report["config"]).
QUOTED = {
    "training": ("steps", "epochs", "min_steps", "batch_size", "positive_weighting"),
    "consensus": ("learning_rate", "momentum", "weight_decay", "lr_schedule", "warmup_steps"),
}


def sim_command(
    *, split_dir: Path, out: Path, seed: int, threads: int, cache: Path, overrides: tuple[str, ...]
) -> list[str]:
    """The `ecl-sim` command line: the defaults, plus only where to write and `overrides`."""
    sets = (f"data.cache_dir={cache}", f"training.threads={threads}", *overrides)
    return [
        sys.executable,
        "-m",
        "hospital_node.simulation.cli",
        "--data",
        str(split_dir),
        "--out",
        str(out),
        "--methods",
        "centralized",
        "--seed",
        str(seed),
        "--quiet",
        "--report-json",
        str(out / "report.json"),
        *(item for s in sets for item in ("--set", s)),
    ]


def final_val_auc(out: Path, run_id: str) -> float | None:
    """The centralized model's mean AUC on the pooled val splits at its last evaluation."""
    with StoreReader.open_readonly(out / STORE_NAME) as reader:
        rows = reader.metrics(run_id, ["val_auc"], method="centralized")
    return None if rows.empty else float(rows.sort_values("step")["value"].iloc[-1])


def run_sim_reference(
    *,
    work: Path,
    name: str,
    split: PooledSplit,
    split_dir: Path,
    seed: int,
    threads: int,
    overrides: tuple[str, ...] = (),
) -> dict:
    """Run `ecl-sim` centralized on `split_dir` (its own process) and score it like the rest."""
    out = work / f"{name}-{split_dir.name}"
    shutil.rmtree(out, ignore_errors=True)
    command = sim_command(
        split_dir=split_dir,
        out=out,
        seed=seed,
        threads=threads,
        cache=work / "cache",
        overrides=overrides,
    )
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    if done.returncode != 0:
        raise RuntimeError(f"ecl-sim failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    site = report["methods"]["centralized"]["per_site"]["all"]
    n_pos = split.test.labels.sum(0).int().tolist()
    config = report["config"]
    return {
        "test": {
            "mean_auc": site["mean_auc"],
            "powered_mean_auc": powered_mean(site["per_finding"], n_pos),
            "per_finding": site["per_finding"],
        },
        "val": {"mean_auc": final_val_auc(out, report["run_id"])},
        "settings": {k: {f: config[k][f] for f in fields} for k, fields in QUOTED.items()},
        "overrides": list(overrides),
        "seconds": time.perf_counter() - started,
    }
