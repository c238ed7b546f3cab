"""Soak: node OS processes (loopback gRPC, mutual TLS, ring + chords) for half an hour or more at a
low step rate, niced. Every `--sample-s` seconds each node's resident memory, open file
descriptors and threads are sampled (CSV + PNG); at the end every node is stopped with SIGTERM
and the message ledger (both ends' counters), `PRAGMA integrity_check` of every results store
and every checkpoint file are checked.

The last node runs exchange privacy with a small budget, so part of the soak exercises withheld
messages (its budget runs out and it stops sending, as docs/privacy.md describes).

    nohup nice -n 10 python -m benchmarks.campaign_soak --minutes 35 &
Writes benchmarks/results/campaigns/soak.json, soak.csv and soak.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.campaign_net import (
    NodeProc,
    base_settings,
    ledger,
    machine,
    merge,
    prepare_sites,
    provision_network,
    ring_with_chords,
    site_names,
    state_checks,
    stop_all,
    training,
)

OUT_DIR = Path("benchmarks/results/campaigns")
WORK = Path("build/campaigns/soak")


@dataclass(frozen=True, kw_only=True)
class SoakPlan:
    """What one soak runs: how many nodes, how long, how fast."""

    nodes: int = 8
    chords: int = 2
    seconds: float = 35 * 60
    sample_s: float = 30.0
    warmup_s: float = 300.0
    steps_per_second: float = 1.0
    swap_interval_s: float = 3.0
    privacy_budget: float | None = 60.0  # epsilon budget of the last node (None: no privacy)


def soak_configs(work: Path, data: Path, plan: SoakPlan) -> dict[str, Path]:
    names = site_names(plan.nodes)
    settings = merge(
        base_settings(steps_per_second=plan.steps_per_second,
                      swap_interval_s=plan.swap_interval_s),
        {"training": {"checkpoint_every": 30},
         "evaluation": {"every": 300, "ci_every": 2, "bootstrap": 20}},
    )  # fmt: skip
    per_node = {}
    if plan.privacy_budget is not None:
        per_node[names[-1]] = {"privacy": {"mode": "exchange", "noise_multiplier": 5.0,
                                           "clip_norm": 0.05,
                                           "epsilon_budget": plan.privacy_budget}}  # fmt: skip
    edges = ring_with_chords(names, plan.chords)
    return provision_network(work / "net", data, edges, settings, per_node)


def sample_all(nodes: dict[str, NodeProc], t: float) -> list[dict[str, Any]]:
    load1 = os.getloadavg()[0]
    rows = []
    for name, node in nodes.items():
        sample = node.sample()
        status = node.status() or {}
        if sample is not None:
            rows.append({"t_s": round(t, 1), "node": name, "step": status.get("step"),
                         "rss_mb": round(sample["rss_mb"], 2),
                         "anon_mb": round(sample["anon_mb"], 2), "fds": sample["fds"],
                         "threads": sample["threads"], "load1": round(load1, 2)})  # fmt: skip
    return rows


def growth(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """`key` just after warm-up and at the end (means of 3 samples each) and the growth in %."""
    start = statistics.fmean(r[key] for r in rows[:3])
    end = statistics.fmean(r[key] for r in rows[-3:])
    return {"after_warmup_mb": round(start, 1), "end_mb": round(end, 1),
            "growth_pct": round(100 * (end - start) / start, 2),
            "max_mb": round(max(r[key] for r in rows), 1)}  # fmt: skip


def memory_summary(rows: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Per node: resident memory and its anonymous part (heap) after warm-up and at the end;
    the ranges of file descriptors and threads after warm-up."""
    per_node: dict[str, Any] = {}
    for name in sorted({r["node"] for r in rows}, key=lambda s: int(s[1:])):
        mine = [r for r in rows if r["node"] == name and r["t_s"] >= warmup_s]
        if len(mine) < 2:
            continue
        per_node[name] = {
            "rss": growth(mine, "rss_mb"), "anon": growth(mine, "anon_mb"),
            "fds": [min(r["fds"] for r in mine), max(r["fds"] for r in mine)],
            "threads": [min(r["threads"] for r in mine), max(r["threads"] for r in mine)],
        }  # fmt: skip
    worst = {k: max((v[k]["growth_pct"] for v in per_node.values()), default=None)
             for k in ("rss", "anon")}  # fmt: skip
    return {"per_node": per_node, "max_rss_growth_pct": worst["rss"],
            "max_anon_growth_pct": worst["anon"], "warmup_s": warmup_s,
            "fd_range_all": [min(v["fds"][0] for v in per_node.values()),
                             max(v["fds"][1] for v in per_node.values())],
            "thread_range_all": [min(v["threads"][0] for v in per_node.values()),
                                 max(v["threads"][1] for v in per_node.values())]}  # fmt: skip


def run_soak(work: Path, plan: SoakPlan, *, data: Path | None = None) -> dict[str, Any]:
    """Start the network, sample it for `plan.seconds`, stop it, check everything."""
    data = data or prepare_sites(work, plan.nodes)
    configs = soak_configs(work, data, plan)
    nodes = {n: NodeProc(n, c, work / "logs") for n, c in configs.items()}
    rows: list[dict[str, Any]] = []
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            if node.wait_for(training, timeout=600) is None:
                raise RuntimeError(f"{node.name} did not start:\n{node.log_text()[-3000:]}")
        started = time.monotonic()
        load_during = []
        while (elapsed := time.monotonic() - started) < plan.seconds:
            rows.extend(sample_all(nodes, elapsed))
            load_during.append(os.getloadavg()[0])
            print(f"[soak] {elapsed / 60:5.1f} min: " + ", ".join(
                f"{r['node']} {r['rss_mb']:.0f}MB/{r['fds']}fd/{r['threads']}t"
                for r in rows[-len(nodes):]), flush=True)  # fmt: skip
            time.sleep(min(plan.sample_s, max(plan.seconds - elapsed, 0.1)))
        rows.extend(sample_all(nodes, time.monotonic() - started))
        alive = {n: node.alive() for n, node in nodes.items()}
    finally:
        codes = stop_all(nodes.values())
    final = {n: node.status() or {} for n, node in nodes.items()}
    return {
        "plan": plan.__dict__,
        "load_avg_during": {
            "mean": round(statistics.fmean(load_during), 2),
            "max": round(max(load_during), 2),
        },  # fmt: skip
        "alive_until_stop": alive,
        "exit_codes": codes,
        "steps": {n: s.get("step") for n, s in final.items()},
        "states_before_stop": {n: s.get("state") for n, s in final.items()},
        "memory": memory_summary(rows, plan.warmup_s),
        "ledger": ledger(final),
        "state": state_checks(configs),
        "errors_in_logs": {n: count_errors(node) for n, node in nodes.items()},
        "samples": rows,
    }


def count_errors(node: NodeProc) -> int:
    """Log lines at ERROR level or with a traceback, over every start of the node."""
    text = node.all_logs()
    return sum(1 for line in text.splitlines() if " ERROR " in line or "Traceback" in line)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path, warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    names = sorted({r["node"] for r in rows}, key=lambda s: int(s[1:]))
    labels = {"rss_mb": "resident memory (MB)", "anon_mb": "anonymous memory (MB)",
              "fds": "open file descriptors", "threads": "threads"}  # fmt: skip
    for (key, label), ax in zip(labels.items(), axes, strict=True):
        for name in names:
            mine = [r for r in rows if r["node"] == name]
            ax.plot([r["t_s"] / 60 for r in mine], [r[key] for r in mine], label=name, lw=1)
        ax.axvline(warmup_s / 60, color="grey", ls=":", lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(ncol=len(names), fontsize=7, loc="lower right")
    axes[-1].set_xlabel("minutes since every node trained (dotted: end of warm-up)")
    fig.suptitle(f"Soak: {len(names)} node processes, loopback gRPC + mutual TLS")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--chords", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=35.0)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--warmup-min", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1.0, help="steps per second per node")
    parser.add_argument("--swap-interval", type=float, default=3.0, help="mean s per edge")
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="epsilon budget of the last node (exchange privacy); 0: off",
    )
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--name", default="soak", help="file stem of the results")
    args = parser.parse_args(argv)
    plan = SoakPlan(nodes=args.nodes, chords=args.chords, seconds=args.minutes * 60,
                    sample_s=args.sample_s, warmup_s=args.warmup_min * 60,
                    steps_per_second=args.rate, swap_interval_s=args.swap_interval,
                    privacy_budget=args.budget or None)  # fmt: skip
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = machine()
    result = run_soak(args.work, plan)
    rows = result.pop("samples")
    result = {"command": "python -m benchmarks.campaign_soak " + " ".join(argv or sys.argv[1:]),
              "machine_at_start": load_before, "machine_at_end": machine(), **result}  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    write_csv(rows, args.out_dir / f"{args.name}.csv")
    plot(rows, args.out_dir / f"{args.name}.png", plan.warmup_s)
    print(json.dumps({k: result[k] for k in ("memory", "exit_codes")}, indent=1))
    print(json.dumps(result["ledger"]["totals"]), json.dumps(result["state"])[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
