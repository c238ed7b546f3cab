"""The figures table of docs/reliability.md, printed as Markdown from the campaigns' result files
(benchmarks/results/campaigns/*.json), so every figure in the page comes from a file that a
command wrote.

    python -m benchmarks.campaign_table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks/results/campaigns")
SOAK = "python -m benchmarks.campaign_soak --minutes 32 --rate 0.5"
FAULTS = "python -m benchmarks.campaign_faults --phase-s 40"
HOSTILE = "python -m benchmarks.campaign_hostile_peers"


def load(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / name
    return json.loads(path.read_text()) if path.is_file() else None


def soak_rows(soak: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    memory, totals = soak["memory"], soak["ledger"]["totals"]
    state = soak["state"].values()
    sound = sum(s["store"] == "ok" for s in state)
    loaded = sum(s["checkpoints"]["files"] - s["checkpoints"]["corrupt"] for s in state)
    files = sum(s["checkpoints"]["files"] for s in state)
    minutes = soak["plan"]["seconds"] / 60
    nodes = soak["plan"]["nodes"]
    return [
        (f"soak: {nodes} nodes, {minutes:.0f} min, memory growth after "
         f"{memory['warmup_s'] / 60:.0f} min warm-up (worst node)", "< 5 %",
         f"resident {memory['max_rss_growth_pct']:+.2f} %, anonymous (heap) "
         f"{memory['max_anon_growth_pct']:+.2f} %", SOAK),
        ("soak: open descriptors / threads per node after warm-up", "bounded",
         f"{memory['fd_range_all'][0]}-{memory['fd_range_all'][1]} fds, "
         f"{memory['thread_range_all'][0]}-{memory['thread_range_all'][1]} threads", SOAK),
        ("soak: messages sent + withheld - received - refused - withheld_received", "0",
         f"{totals['unaccounted']} of {totals['sent']} sent + {totals['withheld']} withheld "
         f"({totals['refused']} refused); received but not applied: {totals['not_applied']}",
         SOAK),
        ("soak: stores passing `PRAGMA integrity_check`; checkpoints that load", "all",
         f"{sound}/{nodes}; {loaded}/{files}; exit codes "
         f"{sorted(set(soak['exit_codes'].values()), key=str)}", SOAK),
    ]  # fmt: skip


def fault_rows(faults: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    if (k := faults.get("kills")) is not None:
        rows.append((
            f"kill -9 of a random node at a random moment, x{k['kills']}: resumed from the "
            "newest checkpoint / rejoined both neighbours", f"{k['kills']} / {k['kills']}",
            f"{k['resumed_ok']} / {k['rejoined']}; corrupt checkpoints at a kill "
            f"{k['corrupt_checkpoints_at_kill']}, stores not ok {k['stores_not_ok_at_kill']}",
            FAULTS + " --only kills"))  # fmt: skip
    if (p := faults.get("proxy")) is not None:
        totals = p["proxy_totals"]
        rows.append((
            "damaging proxy on one edge: damaged messages that reached the gate; swaps after",
            "0; swaps go on",
            f"{p['gate_refused_on_edge']} (of {totals.get('dropped', 0)} drops, "
            f"{totals.get('truncated', 0)} truncations, {totals.get('corrupted', 0)} corruptions, "
            f"{totals.get('delayed', 0)} delays); {p['swaps_after_faults']} swaps in the last "
            f"clean phase; one-sided counts {p['faulty_edge_unaccounted']} <= failed attempts "
            f"{p['failed_attempts']}", FAULTS + " --only proxy"))  # fmt: skip
    if (d := faults.get("disk")) is not None:
        full = d["checkpoints_while_full"]
        rows.append((
            f"full state disk ({d['how']}): error, half-written files, node", "clear error, 0, "
            "goes on", f"ERROR with what to do; {len(full['temp_files'])} temp / "
            f"{full['corrupt']} corrupt files; {d['swaps_with_neighbours_while_full']} swaps "
            f"while full; checkpoints resumed when freed: {d['checkpoints_resumed']}; start on a "
            f"full disk: exit {d.get('full_at_start', {}).get('exit_code')}",
            FAULTS + " --only disk"))  # fmt: skip
    if (r := faults.get("reader")) is not None:
        rows.append((
            "app reader during writes (and a kill -9): 'database is locked' / rows lost",
            "0 / 0", f"{r['locked_errors']} / {r['rows_lost']} in {r['reads']} reads "
            f"({r['errors']} errors of any kind; store {r['store']})",
            FAULTS + " --only reader"))  # fmt: skip
    return rows


def hostile_rows(h: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    before, peak = h["before_attack"], h["peak_during_attack"]
    growth = 100 * (peak["rss_mb"] - before["rss_mb"]) / before["rss_mb"]
    refused = h["node_server_refusals"]

    def slow(kind: str, status: str = "") -> int:
        prefix = f"S/{kind}/{status}"
        return sum(n for k, n in h["per_kind"].items() if k.startswith(prefix))

    return [
        (f"hostile peer: {h['messages']:,} messages from a certified neighbour: crashes, "
         "errors in the log", "0, 0",
         f"{0 if h['target_alive_until_stop'] else 1}, {h['target_errors_in_log']}", HOSTILE),
        ("hostile peer: state changed by refused messages", "0",
         f"{0 if h['after_phase_A']['dual_for_n2_unchanged'] else 1} (dual bit for bit; gate "
         f"remembers {h['after_phase_A']['gate_remembers_n2'] or 'no'} N2 sequence); "
         f"accepted {h['accepted']} = "
         f"valid sent {h['valid_sent']}; final dual = last valid message: "
         f"{h['final_dual_is_valid_message']}", HOSTILE),
        ("hostile peer: slow streams (stalled; one byte a second) cut by the node",
         "all", f"stalled {slow('stall', 'CANCELLED')}/{slow('stall')}, slow-loris "
         f"{slow('slow_loris', 'CANCELLED')}/{slow('slow_loris')}; node: "
         f"idle_timeout {refused.get('refused.idle_timeout', 0)}, call_timeout "
         f"{refused.get('refused.call_timeout', 0)}", HOSTILE),
        ("hostile peer: target memory / threads / descriptors, before -> peak",
         "bounded", f"{before['rss_mb']:.0f} -> {peak['rss_mb']:.0f} MB ({growth:+.0f} %); "
         f"{before['threads']} -> {peak['threads']}; {before['fds']} -> {peak['fds']}", HOSTILE),
        ("hostile peer: the target kept training and swapping", "yes",
         f"{h['steps_during_attack']} steps, {h['honest_swaps_during_attack']} honest swaps "
         "during the attack", HOSTILE),
    ]  # fmt: skip


def table(directory: Path) -> str:
    rows: list[tuple[str, str, str, str]] = []
    if (soak := load(directory, "soak.json")) is not None:
        rows += soak_rows(soak)
    if (faults := load(directory, "faults.json")) is not None:
        rows += fault_rows(faults)
    if (hostile := load(directory, "hostile_peers.json")) is not None:
        rows += hostile_rows(hostile)
    lines = ["| figure | goal | measured | command |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | `{d}` |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    print(table(parser.parse_args(argv).results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
