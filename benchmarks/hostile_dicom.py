"""Hostile-file campaign: 1,000 bad DICOM files beside good ones, through the site loader and the
app's upload path; counts by reason, crashes, mismatches, peak RSS and wall time as JSON.

    python -m benchmarks.hostile_dicom                      # 1,000 files, ~15 min on 2 cores
    python -m benchmarks.hostile_dicom --count 120 --small  # a quick look

Every measurement runs in a fresh child process so that its peak RSS (getrusage ru_maxrss) is
its own: the site load (in-process and with 2 decode workers), the upload path (app.viewer.
load_case on each file's bytes), each kind of file alone, a baseline (good files only) and the
largest image the limits accept.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("build/hostile")
DEFAULT_RESULTS = Path("benchmarks/results/hostile_files.json")
LOADED = "loaded"
UPLOAD_REFUSED = "upload_refused"  # bigger than Streamlit's server.maxUploadSize: never read


def peak_rss_mb() -> float:
    """This process's peak resident set size so far: VmHWM of /proc/self/status. (getrusage's
    ru_maxrss would do on a fresh process, but Linux carries the parent's high-water mark over
    fork + exec, so a child started by a big parent reports the parent's size.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- child processes ---------------------------------------------------------------------------


def child_site(site: Path, workers: int) -> dict[str, Any]:
    """load_site over the corpus: what was loaded, what was skipped with which reason."""
    import logging

    from hospital_node.data.site import DataConfig, load_site

    logging.disable(logging.WARNING)  # the report itself is the output; 1,000 lines of log is not
    expected = json.loads((site / "expected.json").read_text())
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        data = load_site(site, DataConfig(image_size=64, cache_dir=Path(cache), workers=workers))
        wall = time.perf_counter() - started
    got = {s.path: s.reason for s in data.report.skipped}
    loaded = set(expected) - set(got)
    mismatches = [
        {"path": path, "expected": want, "got": got.get(path, LOADED)}
        for path, want in sorted(expected.items())
        if (got.get(path, LOADED) not in want) and (want or path in got)
    ]
    good = [p for p, want in expected.items() if not want]
    return {
        "workers": workers,
        "wall_s": round(wall, 2),
        "peak_rss_mb": peak_rss_mb(),  # the loading process (workers, if any, not included)
        "rows": data.report.n_rows,
        "loaded": data.report.n_loaded,
        "good_files": len(good),
        "good_loaded": sum(p in loaded for p in good),
        "hostile_loaded": sorted(p for p in loaded if expected[p]),
        "skipped_by_reason": data.report.counts(),
        "mismatches": mismatches,
    }


def upload_outcome(path: Path, max_upload_bytes: int) -> str:
    """What the case viewer does with this file uploaded: a reason, LOADED or UPLOAD_REFUSED.
    Anything but app.viewer.CaseError escaping load_case is a crash and propagates."""
    from app.viewer import CaseError, load_case  # imported by child_upload before timing

    if path.stat().st_size > max_upload_bytes:
        return UPLOAD_REFUSED
    try:
        load_case(path.read_bytes())
    except CaseError as exc:
        return exc.detail.split(":", 1)[0]
    return LOADED


def child_upload(site: Path, paths: list[str]) -> dict[str, Any]:
    """The upload path on `paths` (all of expected.json when empty): outcomes, crashes, RSS."""
    import warnings

    import app.viewer  # noqa: F401  (torch, MONAI: imported before the clock starts)
    from app.launch import max_upload_megabytes

    warnings.simplefilter("ignore")
    baseline = peak_rss_mb()
    expected = json.loads((site / "expected.json").read_text())
    chosen = paths or sorted(expected)
    limit = max_upload_megabytes() * 2**20
    outcomes: Counter[str] = Counter()
    crashes, mismatches, slowest = [], [], 0.0
    started = time.perf_counter()
    for relative in chosen:
        one = time.perf_counter()
        try:
            outcome = upload_outcome(site / relative, limit)
        except Exception as exc:  # the campaign counts crashes instead of stopping at one
            crashes.append({"path": relative, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        slowest = max(slowest, time.perf_counter() - one)
        outcomes[outcome] += 1
        want = expected[relative] or [LOADED]
        if outcome not in (*want, UPLOAD_REFUSED):
            mismatches.append({"path": relative, "expected": want, "got": outcome})
    return {
        "files": len(chosen),
        "wall_s": round(time.perf_counter() - started, 2),
        "slowest_file_s": round(slowest, 2),
        "rss_mb_after_imports": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "by_outcome": dict(outcomes.most_common()),
        "crashes": crashes,
        "mismatches": mismatches,
    }


def write_largest(out: Path) -> Path:
    """The largest image the limits accept: Rows x Columns = max_pixels, 16 bits, native."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    from data_tools.hostile_bytes import Bases
    from hospital_node.data.dicom import DEFAULT_LIMITS

    side = math.isqrt(DEFAULT_LIMITS.max_pixels)
    bases = Bases(np.random.default_rng(0))
    ds = bases.dataset(ExplicitVRLittleEndian)
    bases.close()
    ramp = (np.add.outer(np.arange(side), np.arange(side)) % 4096).astype(np.uint16)
    ds.set_pixel_data(ramp, "MONOCHROME2", 12, generate_instance_uid=False)
    del ds.WindowCenter, ds.WindowWidth  # min-max scaling: the float64 path
    path = out / "largest.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def child_largest(path: Path) -> dict[str, Any]:
    """Decode the largest accepted image in a fresh process: its peak RSS bounds a good file."""
    from hospital_node.data.dicom import read_dicom

    before = peak_rss_mb()
    started = time.perf_counter()
    image, ds = read_dicom(path, image_size=64)
    return {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "decode_s": round(time.perf_counter() - started, 2),
        "rss_mb_after_imports": before,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(*args: str) -> dict[str, Any]:
    """Run this module as a child (`_child ARGS`) and return the JSON it prints."""
    command = [sys.executable, "-m", "benchmarks.hostile_dicom", "_child", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"child_failed": done.returncode, "stderr": done.stderr[-3000:]}
    return json.loads(done.stdout.splitlines()[-1])


def child_main(argv: list[str]) -> int:
    mode, site = argv[0], Path(argv[1])
    if mode == "site":
        result = child_site(site, int(argv[2]))
    elif mode == "upload":
        result = child_upload(site, argv[2:])
    else:
        result = child_largest(site)
    print(json.dumps(result))
    return 0


# --- the campaign ------------------------------------------------------------------------------


def per_kind(site: Path, expected: dict[str, list[str]]) -> dict[str, Any]:
    """The upload path on each kind alone: its own peak RSS and time."""
    kinds: dict[str, list[str]] = {}
    for relative in sorted(expected):
        kind = relative.split("/")[2] if relative.startswith("dicom/hostile/") else "good"
        kinds.setdefault(kind, []).append(relative)
    results = {}
    for kind, paths in kinds.items():
        result = run_child("upload", str(site), *paths)
        keys = (
            "files",
            "wall_s",
            "slowest_file_s",
            "rss_mb_after_imports",
            "peak_rss_mb",
            "by_outcome",
            "crashes",
        )
        results[kind] = {k: result.get(k) for k in keys}
        print(
            f"  {kind:16s} {result.get('peak_rss_mb')} MB peak, {result.get('wall_s')} s",
            flush=True,
        )
    return results


def disk_use(site: Path) -> tuple[int, int]:
    files = [p for p in site.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def campaign(args: argparse.Namespace) -> dict[str, Any]:
    from data_tools.hostile import write_hostile_site
    from hospital_node.data.dicom import DEFAULT_LIMITS

    site = args.out / "site"
    started = time.perf_counter()
    expected = write_hostile_site(
        site, args.count, good=args.good, seed=args.seed, small=args.small
    )
    generate_s = time.perf_counter() - started
    apparent, on_disk = disk_use(site)
    print(f"corpus: {args.count} hostile + {args.good} good in {generate_s:.0f} s", flush=True)
    result: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.hostile_dicom", *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "limits": asdict(DEFAULT_LIMITS),
        "corpus": {
            "hostile_files": args.count,
            "good_files": args.good,
            "seed": args.seed,
            "small": args.small,
            "generate_s": round(generate_s, 1),
            "apparent_mb": round(apparent / 2**20, 1),
            "on_disk_mb": round(on_disk / 2**20, 1),
            "by_kind": dict(Counter(p.split("/")[2] for p in expected if "hostile/" in p)),
        },
    }
    for label, mode in (("site_load", "0"), ("site_load_2_workers", "2")):
        result[label] = run_child("site", str(site), mode)
        print(f"{label}: {json.dumps(result[label])[:300]}", flush=True)
    result["upload"] = run_child("upload", str(site))
    print(f"upload: {json.dumps(result['upload'])[:300]}", flush=True)
    result["per_kind"] = per_kind(site, expected)
    result["largest_accepted_image"] = run_child("largest", str(write_largest(args.out)))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hostile_dicom",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=1000, help="hostile files")
    parser.add_argument("--good", type=int, default=40, help="good files beside them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="big kinds just over their limits")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus folder")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON written here")
    args = parser.parse_args(argv)
    result = campaign(args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.results}")
    crashes = len(result["upload"].get("crashes", [1]))
    failed = [k for k in ("site_load", "site_load_2_workers") if "child_failed" in result[k]]
    return 1 if crashes or failed else 0


if __name__ == "__main__":
    sys.exit(main())
