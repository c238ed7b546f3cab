"""Export phases of benchmarks.bench_full_scale: `ecl-data nih` at full size, killed and resumed."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.full_scale_common import PYTHON, Context, check_ok, disk_bytes, run_measured
from data_tools.nih_export import PARTIAL_SUFFIX, is_complete_dicom

KILL_LIMIT = 10_000  # images in the kill-and-resume run (a bounded copy of the real thing)


def nih_command(context: Context, out: Path, limit: int | None = None) -> list[str]:
    command = [PYTHON, "-m", "data_tools.cli", "nih", "--nih-dir", str(context.standin)]
    command += ["--out", str(out), "--size", str(context.size)]
    command += ["--workers", str(context.workers), "--no-progress"]
    return command + ([] if limit is None else ["--limit", str(limit)])


def _partition(out: Path) -> dict[str, Any]:
    return json.loads((out / "partition.json").read_text())


def phase_nih(context: Context) -> dict[str, Any]:
    """PNG -> 8 hospitals + common_test of DICOM, every image of the stand-in."""
    out = context.sites
    before = _partition(out).get("status") if (out / "partition.json").is_file() else None
    run = check_ok(run_measured(nih_command(context, out), log=context.work / "nih.log"), "nih")
    partition = _partition(out)
    return {
        "export": run,
        "workers": context.workers,
        "complete_before_this_run": before == "complete",
        "written": partition["written"],
        "skipped": partition["skipped"],
        "failed": len(partition["failed_images"]),
        "img_per_s": round(partition["written"] / run["wall_s"], 1),
        "dicom_disk": disk_bytes(out, ".dcm"),
        "site_sizes": partition["site_sizes"],
        "missing_findings_dropped_images": partition.get("missing_findings_dropped_images"),
        "seeded_common_test": partition["seeded_common_test"],
    }


def _kill_after(command: list[str], log: Path, out: Path, target: int) -> dict[str, Any]:
    """Start `command` in its own process group; SIGKILL the group once `target` DICOM files
    exist (as a crash or `kill -9` would: workers die mid-file too)."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        written = 0
        while process.poll() is None and written < target:
            time.sleep(2.0)
            written = disk_bytes(out, ".dcm")["files"] if out.is_dir() else 0
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the group of the process started above
        process.wait()
    return {
        "killed_after_s": round(time.perf_counter() - started, 1),
        "exit_status": process.returncode,
        "dcm_files_at_kill": disk_bytes(out, ".dcm")["files"],
        "partial_files_at_kill": disk_bytes(out, PARTIAL_SUFFIX)["files"],
        "partition_status_at_kill": _partition(out).get("status"),
    }


def _verify_all(out: Path, size: int) -> dict[str, Any]:
    """Every .dcm a labels.csv row names is a complete DICOM; no temp file is left."""
    listed, bad = 0, []
    for table in sorted(out.glob("*/labels.csv")):
        for line in table.read_text().splitlines()[1:]:
            listed += 1
            path = table.parent / line.split(",", 1)[0]
            if not is_complete_dicom(path, size):
                bad.append(str(path.relative_to(out)))
    return {
        "listed_files": listed,
        "incomplete_files": len(bad),
        "partial_files_left": disk_bytes(out, PARTIAL_SUFFIX)["files"],
        "dcm_files": disk_bytes(out, ".dcm")["files"],
    }


def kill_and_resume(context: Context) -> dict[str, Any]:
    """A run of KILL_LIMIT images killed at ~40 %, then the same command again."""
    out = context.work / "nih_kill"
    shutil.rmtree(out, ignore_errors=True)
    total = json.loads((context.standin / "standin.json").read_text())["images"]
    limit = min(KILL_LIMIT, total)
    command = nih_command(context, out, limit)
    kill = _kill_after(command, context.work / "nih_kill.log", out, int(0.4 * limit))
    rerun = check_ok(run_measured(command, log=context.work / "nih_kill2.log"), "resume")
    partition = _partition(out)
    return {
        "images": limit,
        "kill": kill,
        "rerun": {**rerun, "written": partition["written"], "skipped": partition["skipped"]},
        "stale_files_removed": partition["stale_files_removed"],
        "after_rerun": _verify_all(out, context.size),
    }


def damage_and_resume(context: Context, n: int = 100) -> dict[str, Any]:
    """On the full export: n files deleted, n cut in half, n stray temp files; re-run."""
    files = sorted(context.sites.rglob("*.dcm"))
    victims = random.Random(0).sample(files, 2 * n)
    for path in victims[:n]:
        path.unlink()
    for path in victims[n:]:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    for path in victims[:n]:
        path.with_name(path.name + PARTIAL_SUFFIX).write_bytes(b"DICM")
    command = nih_command(context, context.sites)
    rerun = check_ok(run_measured(command, log=context.work / "nih_damage.log"), "re-run")
    partition = _partition(context.sites)
    complete = all(is_complete_dicom(p, context.size) for p in victims)
    return {
        "deleted": n,
        "truncated": n,
        "stray_partials": n,
        "rerun": {**rerun, "written": partition["written"], "skipped": partition["skipped"]},
        "stale_files_removed": partition["stale_files_removed"],
        "victims_complete_after": complete,
        "partial_files_left": disk_bytes(context.sites, PARTIAL_SUFFIX)["files"],
    }


def phase_resume(context: Context) -> dict[str, Any]:
    return {"kill_and_resume": kill_and_resume(context), "damage": damage_and_resume(context)}
