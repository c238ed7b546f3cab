"""Shared pieces of benchmarks.bench_full_scale: settings, measured child processes, disk use."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
TIME = "/usr/bin/time"  # GNU time: peak RSS of the measured process (%M, KiB)


@dataclass(frozen=True)
class Context:
    """Settings shared by the phases; paths under `work`."""

    labels: Path
    work: Path
    workers: int = 2
    limit: int | None = None
    size: int = 256
    image_size: int = 64
    small_fraction: float = 0.1
    sim_epochs: float = 1.0

    @property
    def standin(self) -> Path:
        return self.work / "standin"

    @property
    def sites(self) -> Path:
        return self.work / "nih8"

    @property
    def cache(self) -> Path:
        return self.work / "cache"


def disk_bytes(path: Path, suffix: str = "") -> dict[str, int]:
    """Files and bytes allocated on disk under `path` (optionally only names ending `suffix`)."""
    files = allocated = apparent = 0
    for folder, _, names in os.walk(path):
        for name in names:
            if suffix and not name.endswith(suffix):
                continue
            stat = os.stat(os.path.join(folder, name))
            files += 1
            allocated += stat.st_blocks * 512
            apparent += stat.st_size
    return {"files": files, "bytes_on_disk": allocated, "bytes_apparent": apparent}


def _child_memory(parent: int) -> dict[str, int]:
    """RssAnon and RssFile (KiB) of the process that `parent` (GNU time) started; {} if none."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        status = Path(f"/proc/{children[0]}/status").read_text() if children else ""
    except OSError:
        return {}
    fields = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields


def run_measured(command: list[str], *, log: Path, env: dict[str, str] | None = None) -> dict:
    """Run `command` (stdout/stderr to `log`); wall seconds, exit status and the peak RSS of
    the command's own process (worker processes are separate and reported elsewhere), with
    the peaks of its private (RssAnon) and file-backed (RssFile: mapped files, e.g. the
    decode cache, which the kernel can drop) parts sampled every 0.5 s."""
    rss_file = log.with_suffix(".rss")
    peaks = {"RssAnon": 0, "RssFile": 0}
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [TIME, "-f", "%M", "-o", str(rss_file), *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
        )
        while process.poll() is None:
            for name, value in _child_memory(process.pid).items():
                peaks[name] = max(peaks[name], value)
            time.sleep(0.5)
        status = process.returncode
    wall = time.perf_counter() - started
    text = rss_file.read_text().strip().splitlines() if rss_file.is_file() else []
    peak_kib = int(text[-1]) if text and text[-1].isdigit() else None
    return {
        "command": " ".join(command),
        "exit_status": status,
        "wall_s": round(wall, 2),
        "peak_rss_mib": None if peak_kib is None else round(peak_kib / 1024, 1),
        "peak_rss_anon_mib_sampled": round(peaks["RssAnon"] / 1024, 1),
        "peak_rss_file_mib_sampled": round(peaks["RssFile"] / 1024, 1),
    }


def check_ok(result: dict, what: str) -> dict:
    if result["exit_status"] != 0:
        raise RuntimeError(f"{what} failed ({result['exit_status']}): {result['command']}")
    return result
