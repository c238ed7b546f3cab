"""Phases of benchmarks.bench_full_scale: stand-in, cache, memory, throughput, simulation."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from benchmarks.full_scale_common import PYTHON, Context, check_ok, disk_bytes, run_measured
from benchmarks.full_scale_export import nih_command, phase_nih, phase_resume
from data_tools.labels import COMMON_TEST_SITE, read_label_records


def standin_command(context: Context) -> list[str]:
    command = [PYTHON, "-m", "data_tools.cli", "synth", "--nih-layout", "--quiet"]
    command += ["--labels", str(context.labels), "--out", str(context.standin)]
    command += ["--size", str(context.size), "--workers", str(context.workers)]
    return command + ([] if context.limit is None else ["--limit", str(context.limit)])


def phase_standin(context: Context) -> dict[str, Any]:
    """Render the stand-in release (continuing a partial one), then re-run: nothing to do."""
    manifest = context.standin / "standin.json"
    before = json.loads(manifest.read_text()) if manifest.is_file() else {}
    first = check_ok(run_measured(standin_command(context), log=context.work / "standin.log"),
                   "stand-in")  # fmt: skip
    after = json.loads(manifest.read_text())
    rerun = check_ok(run_measured(standin_command(context), log=context.work / "standin2.log"),
                   "stand-in re-run")  # fmt: skip
    again = json.loads(manifest.read_text())
    return {
        "generation": first,
        "images": after["images"],
        "patients": after["patients"],
        "rendered_in_this_run": after["rendered"],
        "already_complete_before": after["already_complete"],
        "complete_before_this_run": before.get("status") == "complete",
        "png_img_per_s": round(after["rendered"] / first["wall_s"], 1),
        "png_disk": disk_bytes(context.standin, ".png"),
        "rerun": {**rerun, "rendered": again["rendered"], "skipped": again["already_complete"]},
        "settings": after["settings"],
    }


def probe(context: Context, name: str, data: Path, cache: Path, log: str, *extra: str) -> dict:
    """Run benchmarks.full_scale_probe in a child process; its JSON plus wall time and RSS."""
    command = [PYTHON, "-m", "benchmarks.full_scale_probe", name, "--data", str(data)]
    command += ["--cache", str(cache), "--image-size", str(context.image_size), *extra]
    run = check_ok(run_measured(command, log=context.work / log), f"probe {name}")
    lines = (context.work / log).read_text().strip().splitlines()
    return {"process": run, **json.loads(lines[-1])}


def phase_cache(context: Context) -> dict[str, Any]:
    """Every site decoded into an empty uint8 cache (workers), then loaded from it."""
    shutil.rmtree(context.cache, ignore_errors=True)
    workers = ("--workers", str(context.workers))
    cold = probe(context, "load", context.sites, context.cache, "cache_cold.log", *workers)
    cached = probe(context, "load", context.sites, context.cache, "cache_hot.log")
    return {
        "image_size": context.image_size,
        "workers": context.workers,
        "cold": cold,
        "cached": cached,
        "cache_size": cold["cache"],
        "decode_img_per_s_cold": cold["img_per_s"],
        "load_img_per_s_cached": cached["img_per_s"],
    }


def phase_rss(context: Context) -> dict[str, Any]:
    """Peak memory of loading every site from the cache, at a fraction and at all of the
    release (the fraction is exported and cached first, from the same stand-in PNGs)."""
    total = json.loads((context.standin / "standin.json").read_text())["images"]
    limit = int(context.small_fraction * total)
    small, small_cache = context.work / "nih8_small", context.work / "cache_small"
    check_ok(run_measured(nih_command(context, small, limit), log=context.work / "nih_small.log"),
             "nih (small)")  # fmt: skip
    workers = ("--workers", str(context.workers))
    probe(context, "load", small, small_cache, "rss_small_cold.log", *workers)
    result = {}
    for label, data, cache in (
        ("small", small, small_cache),
        ("full", context.sites, context.cache),
    ):
        record = probe(context, "load", data, cache, f"rss_{label}.log")
        result[label] = {
            "images": record["images"],
            "cache_bytes": record["cache"]["bytes"],
            "peak_rss_mib": record["process"]["peak_rss_mib"],
            "memory_before_load_mib": record["memory_before_load_mib"],
            "memory_after_load_mib": record["memory_after_load_mib"],
            "load_adds_anon_mib": round(
                record["memory_after_load_mib"]["RssAnon"]
                - record["memory_before_load_mib"]["RssAnon"],
                1,
            ),
            "load_wall_s": record["wall_s"],
        }
    result["images_ratio"] = round(result["full"]["images"] / result["small"]["images"], 2)
    result["peak_rss_ratio"] = round(
        result["full"]["peak_rss_mib"] / result["small"]["peak_rss_mib"], 2
    )
    result["load_adds_anon_ratio"] = round(
        result["full"]["load_adds_anon_mib"] / max(0.1, result["small"]["load_adds_anon_mib"]), 2
    )
    return result


def phase_throughput(context: Context) -> dict[str, Any]:
    """Data path from the cache vs compact-model training at image_size, in one process."""
    return probe(context, "throughput", context.sites, context.cache, "throughput.log")


def train_images(sites: Path) -> int:
    """Training-split rows over the hospitals (common_test excluded)."""
    return sum(
        sum(r["split"] == "train" for r in read_label_records(table))
        for table in sites.glob("*/labels.csv")
        if table.parent.name != COMMON_TEST_SITE
    )


def phase_sim(context: Context, batch: int = 16, hospitals: int = 8) -> dict[str, Any]:
    """ecl-sim, ECL-ADMM over the 8 hospitals for `sim_epochs` passes over their train data."""
    n_train = train_images(context.sites)
    steps = math.ceil(context.sim_epochs * n_train / (hospitals * batch))
    out = context.work / "sim"
    shutil.rmtree(out, ignore_errors=True)
    settings = {
        "data.image_size": context.image_size,
        "data.cache_dir": context.cache,
        "evaluation.every": steps,
        "training.checkpoint_every": steps,
        "evaluation.bootstrap": 20,
        "training.batch_size": batch,
    }
    command = [PYTHON, "-m", "hospital_node.simulation.cli", "--data", str(context.sites)]
    command += ["--out", str(out), "--methods", "ecl-admm", "--steps", str(steps), "--quiet"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    run = run_measured(command, log=context.work / "sim.log")
    record: dict[str, Any] = {"run": run, "steps": steps, "train_images": n_train,
                              "settings": {k: str(v) for k, v in settings.items()}}  # fmt: skip
    store = out / "results.sqlite"
    if run["exit_status"] == 0 and store.is_file():
        with sqlite3.connect(store) as db:
            (train_s,) = db.execute(
                "SELECT MAX(value) FROM metrics WHERE name = 'wall_time_s'"
            ).fetchone()
        record["training_wall_s"] = round(train_s, 1)
        record["train_img_per_s"] = round(steps * hospitals * batch / train_s, 1)
    return record


PHASES = {
    "standin": phase_standin,
    "nih": phase_nih,
    "resume": phase_resume,
    "cache": phase_cache,
    "rss": phase_rss,
    "throughput": phase_throughput,
    "sim": phase_sim,
}
