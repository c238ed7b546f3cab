"""The demo's comparison over several seeds: mean +- sd per method and ECL minus gossip per seed.

`make demo` is one seed; this runs the same defaults (`ecl-sim` with no settings beyond the
ones given here) for each seed on the same generated data, so a difference between methods
can be read against the spread the seed alone causes. Resumable: each seed is its own folder.

    python -m benchmarks.bench_demo                          # seeds 0,1,2, the defaults
    python -m benchmarks.bench_demo --set training.positive_weighting=false --name unweighted
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORK = Path("build/bench/demo")
OUT = Path("benchmarks/results")


def run_seed(work: Path, seed: int, extra: list[str]) -> dict:
    out = work / f"seed{seed}"
    report = out / "report.json"
    if report.is_file():
        return json.loads(report.read_text())
    data = work.parent / "data"
    source = ["--data", str(data)] if (data / "common_test" / "labels.csv").is_file() else []
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "hospital_node.simulation.cli",
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--quiet",
        "--report-json",
        str(report),
        *source,
        *extra,
    ]
    subprocess.run(command, check=True)  # noqa: S603 (our own CLI)
    if not source:  # the first run generated the demo's synthetic set: share it
        (out / "data").rename(data)
    result = json.loads(report.read_text())
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    report.write_text(json.dumps(result))
    return result


def table(reports: dict[int, dict], ecl: str) -> str:
    methods = list(next(iter(reports.values()))["methods"])
    lines = ["| method | " + " / ".join(f"seed {s}" for s in reports) + " | mean +- sd |",
             "|---|---|---:|"]  # fmt: skip
    for method in methods:
        values = [r["methods"][method]["mean_auc"] for r in reports.values()]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " / ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {method} | {cells} | {statistics.mean(values):.3f} +- {spread:.3f} |")
    if ecl in methods and "gossip" in methods:
        gaps = [r["methods"][ecl]["mean_auc"] - r["methods"]["gossip"]["mean_auc"]
                for r in reports.values()]  # fmt: skip
        lines.append(f"| {ecl} - gossip | " + " / ".join(f"{g:+.3f}" for g in gaps) + " | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--name", default="defaults", help="label of this setting")
    parser.add_argument("--ecl", default="ecl-isvr-admm", help="the ECL method to compare")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    extra = [x for pair in args.overrides for x in ("--set", pair)]
    work = args.work / args.name
    reports = {seed: run_seed(work, seed, extra) for seed in args.seeds}
    text = f"# Demo over seeds: {args.name}\n\nSettings: {args.overrides or 'defaults'}\n\n"
    text += table(reports, args.ecl)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"demo_{args.name}.md").write_text(text)
    summary = {
        seed: {
            "wall_time_s": r.get("wall_time_s"),
            "methods": {
                m: {"mean_auc": e["mean_auc"], "absent_findings_auc": e["absent_findings_auc"]}
                for m, e in r["methods"].items()
            },
        }  # fmt: skip
        for seed, r in reports.items()
    }
    (args.out / f"demo_{args.name}.json").write_text(json.dumps(summary, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
