"""Faults campaign, network: a proxy on the N1 -> N2 edge that drops, delays, truncates and
corrupts bytes, in phases; TLS stays end to end, so every damaged byte must be caught by TLS or
gRPC (the swap fails and is retried), never reach the gate, and swaps must go on between faults."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.campaign_kills import start_network
from benchmarks.campaign_net import (
    NodeProc,
    ledger,
    listen_port,
    point_peer_at,
    state_checks,
    stop_all,
)
from benchmarks.fault_proxy import FaultPlan, FaultProxy

PHASES: tuple[tuple[str, FaultPlan], ...] = (
    ("clean", FaultPlan()),
    ("drop", FaultPlan(drop=0.03)),
    ("delay", FaultPlan(delay=0.3, max_delay_s=2.0)),
    ("truncate", FaultPlan(truncate=0.03)),
    ("corrupt", FaultPlan(corrupt=0.03)),
    ("all", FaultPlan(drop=0.01, delay=0.1, truncate=0.01, corrupt=0.01, max_delay_s=2.0)),
    ("clean_again", FaultPlan()),
)


def edge_counters(nodes: dict[str, NodeProc], a: str, b: str) -> dict[str, int]:
    """Both ends' counters of the a -- b edge (a initiates) and a's client record."""
    sa = (nodes[a].status() or {}).get("peers", {}).get(b, {})
    sb = (nodes[b].status() or {}).get("peers", {}).get(a, {})
    client = sa.get("client") or {}
    return {
        "a_received": sa.get("messages_received", 0),
        "b_received": sb.get("messages_received", 0),
        "gate_refused": sum((sa.get("rejected") or {}).values())
        + sum((sb.get("rejected") or {}).values()),
        "calls_ok": client.get("total_successes", 0),
        "calls_failed": client.get("total_failures", 0),
        "attempts": client.get("attempts", 0),
    }


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def run_phases(
    nodes: dict[str, NodeProc],
    proxy: FaultProxy,
    phase_s: float,
    phases: tuple[tuple[str, FaultPlan], ...] = PHASES,
) -> list[dict[str, Any]]:
    """Each phase's fault plan for `phase_s` seconds; per phase the N1 -- N2 counters' change."""
    out = []
    for name, plan in phases:
        proxy.set_plan(plan)
        edge, faults = edge_counters(nodes, "N1", "N2"), proxy.counters()
        steps = {n: (node.status() or {}).get("step", 0) for n, node in nodes.items()}
        time.sleep(phase_s)
        row = {"phase": name, **delta(edge_counters(nodes, "N1", "N2"), edge),
               "proxy": delta(proxy.counters(), faults),
               "all_alive": all(n.alive() for n in nodes.values()),
               "all_trained": all((n.status() or {}).get("step", 0) > steps[k]
                                  for k, n in nodes.items())}  # fmt: skip
        out.append(row)
        print(f"[proxy] {row}", flush=True)
    return out


def run_proxy(
    configs: dict[str, Path], logs: Path, *, seed: int, phase_s: float = 60.0
) -> dict[str, Any]:
    """A 3-node ring whose N1 dials N2 through the fault proxy (N1 starts every N1--N2 swap)."""
    proxy = FaultProxy(target_port=listen_port(configs["N2"]), seed=seed)
    point_peer_at(configs["N1"], "N2", proxy.start())
    try:
        nodes = start_network(configs, logs)
        try:
            phases = run_phases(nodes, proxy, phase_s)
        finally:
            codes = stop_all(nodes.values())
    finally:
        proxy.stop()
    final = {n: node.status() or {} for n, node in nodes.items()}
    books = ledger(final)
    faulty = {k: v for k, v in books["edges"].items() if k in ("N1->N2", "N2->N1")}
    failed_attempts = sum(p["attempts"] - p["calls_ok"] for p in phases)
    return {
        "seed": seed,
        "phase_s": phase_s,
        "phases": phases,
        "gate_refused_on_edge": sum(p["gate_refused"] for p in phases),
        "swaps_after_faults": phases[-1]["b_received"],
        "faulty_edge_ledger": faulty,
        "faulty_edge_unaccounted": sum(abs(v["unaccounted"]) for v in faulty.values()),
        # a call that broke after the callee took the caller's message (or streamed its reply)
        # leaves one message counted at one end only: at most one per failed attempt
        "failed_attempts": failed_attempts,
        "failed_calls": sum(p["calls_failed"] for p in phases),
        "other_edges_unaccounted": sum(
            abs(v["unaccounted"]) for k, v in books["edges"].items() if k not in faulty
        ),  # fmt: skip
        "exit_codes": codes,
        "state_at_end": state_checks(configs),
        "proxy_totals": proxy.counters(),
    }
