"""Faults while training, scripted and seeded, against node OS processes on loopback:

- kills: kill -9 of a random node at a random moment, `--kills` times; each must resume from a
  checkpoint at least as new as the last one before the kill and rejoin its neighbours, with no
  corrupt checkpoint or results store at the moment of the kill or after;
- proxy: a TCP proxy between two nodes that drops, delays, truncates and corrupts bytes (TLS
  stays end to end): nothing damaged may pass the gate, swaps go on between the faults;
- disk: a node whose state disk fills up (benchmarks/campaign_disk.py);
- reader: the clinician app's store reader reading a node's results store while the node writes
  it (and across a kill -9 of the node): no 'database is locked', no row lost.

    nohup nice -n 10 python -m benchmarks.campaign_faults &
Writes benchmarks/results/campaigns/faults.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.campaign_disk import run_disk_full
from benchmarks.campaign_kills import run_kills, run_reader
from benchmarks.campaign_net import (
    base_settings,
    machine,
    merge,
    prepare_sites,
    provision_network,
    ring_with_chords,
    site_names,
)
from benchmarks.campaign_proxy import run_proxy

OUT = Path("benchmarks/results/campaigns/faults.json")
WORK = Path("build/campaigns/faults")


def network(work: Path, data: Path, name: str, count: int, **settings: Any) -> dict[str, Path]:
    """A ring of `count` nodes at 4 steps/s, checkpoints every 5 steps (a kill often lands in
    or near one), swaps every 0.5 s per edge; `settings` are merged in."""
    base = merge(base_settings(steps_per_second=4.0, swap_interval_s=0.5),
                 {"training": {"checkpoint_every": 5}, "run": {"log_every": 5}})  # fmt: skip
    edges = ring_with_chords(site_names(count), 0)
    return provision_network(work / name, data, edges, merge(base, settings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["kills", "proxy", "disk", "reader"])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=4, help="nodes of the kill network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase-s", type=float, default=60.0, help="seconds per proxy phase")
    parser.add_argument("--reader-s", type=float, default=120.0, help="store-reader seconds")
    parser.add_argument("--disk", choices=("auto", "loop", "rlimit_fsize"), default="auto",
                        help="how the state disk fills: a loop-mounted image (root) or a "
                        "file-size limit on the node process")  # fmt: skip
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_sites(args.work, max(args.nodes, 3))
    result: dict[str, Any] = {
        "command": "python -m benchmarks.campaign_faults " + " ".join(argv or sys.argv[1:]),
        "machine_at_start": machine(),
    }
    parser_work = args.work
    runs = {
        "kills": lambda: run_kills(
            network(parser_work, data, "kills", args.nodes),
            parser_work / "logs-kills",
            kills=args.kills,
            seed=args.seed,
        ),
        "proxy": lambda: run_proxy(
            network(parser_work, data, "proxy", 3),
            parser_work / "logs-proxy",
            seed=args.seed,
            phase_s=args.phase_s,
        ),
        "reader": lambda: run_reader(
            network(parser_work, data, "reader", 3, run={"log_every": 1}),
            parser_work / "logs-reader",
            seconds=args.reader_s,
        ),
        "disk": lambda: run_disk_full(
            network(args.work, data, "disk", 3), args.work / "disk", how=args.disk
        ),  # fmt: skip
    }
    for name in args.only:
        started = time.monotonic()
        result[name] = runs[name]()
        result[name]["seconds"] = round(time.monotonic() - started, 1)
        result[name]["load_avg_after"] = machine()["load_avg"]
        print(name, json.dumps(result[name], indent=1)[:4000], flush=True)
    result["machine_at_end"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
