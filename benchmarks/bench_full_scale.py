"""The NIH release at full size: stand-in PNGs -> `ecl-data nih` -> site caches -> data path.

Every phase runs as its own process (wall time, peak RSS), results merge into one JSON file,
so an expensive phase is run once and the cheap ones can be repeated:

    python -m benchmarks.bench_full_scale --steps standin,nih,resume,cache,rss,throughput,sim

Phases: `standin` (ecl-data synth --nih-layout; then a re-run that finds every PNG complete),
`nih` (ecl-data nih, PNG -> 8 hospitals of DICOM), `resume` (a killed `ecl-data nih` run
continued, and damaged files rewritten), `cache` (decode every site to the uint8 cache, then
load it cached), `rss` (peak memory of loading all hospitals at 10 % and 100 % of the
release), `throughput` (data-path img/s from the cache vs the compact model's training img/s
at 64 px), `sim` (one epoch of ecl-sim over the 8 hospitals).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.full_scale_phases import PHASES, Context

DEFAULT_LABELS = Path("/work/shared/data/nih-dev/Data_Entry_2017_v2020.csv")
DEFAULT_WORK = Path("build/full_scale")
DEFAULT_OUT = Path("benchmarks/results/full_scale.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_full_scale",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="NIH label table")
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="folder for the stand-in, sites, caches"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (merged)")
    parser.add_argument(
        "--steps", default=",".join(PHASES), help=f"comma-separated phases of {list(PHASES)}"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes per phase")
    parser.add_argument(
        "--limit", type=int, default=None, help="stand-in: at most N images (default: all rows)"
    )
    parser.add_argument("--size", type=int, default=256, help="stand-in PNG and DICOM matrix")
    parser.add_argument("--image-size", type=int, default=64, help="training resolution")
    parser.add_argument(
        "--small-fraction", type=float, default=0.1, help="rss: the smaller release size"
    )
    parser.add_argument(
        "--sim-epochs", type=float, default=1.0, help="sim: epochs over the hospitals' train data"
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.steps.split(",") if s not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; choose from {list(PHASES)}")
    return args


def merge_results(path: Path, phase: str, record: dict[str, Any]) -> None:
    """Replace one phase's record in the JSON file, keep the others (temp file + rename)."""
    results: dict[str, Any] = {}
    if path.is_file():
        results = json.loads(path.read_text())
    results.setdefault("phases", {})[phase] = record
    results["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = Context(
        labels=args.labels,
        work=args.work,
        workers=args.workers,
        limit=args.limit,
        size=args.size,
        image_size=args.image_size,
        small_fraction=args.small_fraction,
        sim_epochs=args.sim_epochs,
    )
    context.work.mkdir(parents=True, exist_ok=True)
    for phase in args.steps.split(","):
        run: Callable[[Context], dict[str, Any]] = PHASES[phase]
        print(f"== {phase}", flush=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        load_before = os.getloadavg()[0]
        record = run(context)
        record.update(started=started, load_average_before=round(load_before, 2))
        merge_results(args.out, phase, record)
        print(json.dumps(record, indent=1, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
