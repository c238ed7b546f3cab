"""Faults campaign, crashes: kill -9 of a random node at a random moment, and the clinician app's
store reader reading a node's results store while the node writes it (and is killed)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.campaign_net import (
    NodeProc,
    Status,
    checkpoint_check,
    ledger,
    state_checks,
    stop_all,
    store_integrity,
    swapped_since_boot,
    training,
)
from hospital_node.checkpoint import list_checkpoints
from hospital_node.store.reader import StoreReader
from hospital_node.store.schema import StoreError


def start_network(
    configs: dict[str, Path], logs: Path, ready: Callable[[Status], bool] = swapped_since_boot
) -> dict[str, NodeProc]:
    """Start every node; return once each is `ready` (default: swapped with every neighbour)."""
    nodes = {n: NodeProc(n, c, logs) for n, c in sorted(configs.items())}
    for node in nodes.values():
        node.start()
    for node in nodes.values():
        if node.wait_for(ready, timeout=300) is None:
            stop_all(nodes.values())
            raise RuntimeError(f"{node.name} did not start:\n{node.log_text()[-3000:]}")
    return nodes


def newest_checkpoint(node: NodeProc) -> int | None:
    files = list_checkpoints(node.state_dir / "checkpoints")
    return int(files[-1].name[5:17]) if files else None


def kill_round(nodes: dict[str, NodeProc], rng: random.Random) -> dict[str, Any]:
    """Kill -9 a random node at a random moment; check its files; restart it; what happened."""
    time.sleep(rng.uniform(0.5, 4.0))
    victim = nodes[rng.choice(sorted(nodes))]
    others = [n for n in nodes.values() if n is not victim]
    before = newest_checkpoint(victim)
    victim.kill()
    at_kill = checkpoint_check(victim.state_dir / "checkpoints")
    store = store_integrity(victim.state_dir / "results.sqlite")
    steps = {n.name: (n.status() or {}).get("step", -1) for n in others}
    started = time.monotonic()
    victim.start()
    status = victim.wait_for(training, timeout=180)
    restart_s = time.monotonic() - started
    rejoined = victim.wait_for(swapped_since_boot, timeout=120) is not None
    resumed = (status or {}).get("resumed_from_step")
    advanced = all((n.status() or {}).get("step", -1) > steps[n.name] for n in others)
    return {"victim": victim.name, "checkpoint_before_kill": before, "resumed_from_step": resumed,
            "resumed_ok": resumed is not None and resumed >= (before or 0),
            "rejoined": rejoined, "others_advanced": advanced,
            "corrupt_checkpoints_at_kill": at_kill["corrupt"],
            "temp_files_at_kill": len(at_kill["temp_files"]), "store_at_kill": store,
            "restart_to_training_s": round(restart_s, 1)}  # fmt: skip


def run_kills(configs: dict[str, Path], logs: Path, *, kills: int, seed: int) -> dict[str, Any]:
    nodes = start_network(configs, logs)
    rng = random.Random(seed)
    rounds = []
    try:
        for i in range(kills):
            rounds.append(kill_round(nodes, rng))
            print(f"[kills] {i + 1}/{kills}: {rounds[-1]}", flush=True)
    finally:
        codes = stop_all(nodes.values())
    final = {n: node.status() or {} for n, node in nodes.items()}
    return {
        "kills": kills,
        "seed": seed,
        "resumed_ok": sum(r["resumed_ok"] for r in rounds),
        "rejoined": sum(r["rejoined"] for r in rounds),
        "others_advanced": sum(r["others_advanced"] for r in rounds),
        "corrupt_checkpoints_at_kill": sum(r["corrupt_checkpoints_at_kill"] for r in rounds),
        "kills_during_a_checkpoint_write": sum(r["temp_files_at_kill"] > 0 for r in rounds),
        "stores_not_ok_at_kill": sum(r["store_at_kill"] != "ok" for r in rounds),
        "exit_codes_at_end": codes,
        "state_at_end": state_checks(configs),
        # counters of a killed node go back to its checkpoint: the ledger is informative only
        "ledger_totals": ledger(final)["totals"],
        "rounds": rounds,
    }


class StoreWatcher:
    """Reads a results store the way the clinician app does (app/data.py: a fresh read-only
    StoreReader per query) in a loop; records every error and every metrics row it saw."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id
        self.errors: list[str] = []
        self.reads = 0
        self.seen: dict[tuple[str, int, str], float] = {}  # (site, step, name) -> when seen
        self.row_counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="store-watcher")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with StoreReader.open_readonly(self.path) as reader:
                    reader.list_runs()
                    reader.node_status(self.run_id)
                    reader.exchanges(self.run_id)
                    frame = reader.metrics(self.run_id)
                now = time.monotonic()
                for row in frame.itertuples():
                    self.seen.setdefault((row.site, int(row.step), row.name), now)
                self.row_counts.append(len(frame))
                self.reads += 1
            except (StoreError, OSError, ValueError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            self._stop.wait(0.05)


def final_metric_keys(path: Path, run_id: str) -> set[tuple[str, int, str]]:
    with StoreReader.open_readonly(path) as reader:
        frame = reader.metrics(run_id)
    return {(r.site, int(r.step), r.name) for r in frame.itertuples()}


def run_reader(configs: dict[str, Path], logs: Path, *, seconds: float) -> dict[str, Any]:
    """Watch the first node's store for `seconds`, kill -9 that node halfway, restart it.

    Rows the reader saw must still be in the store at the end, except rows after the
    checkpoint the node resumed from (truncate_after removes them on purpose: those steps are
    logged again, never counted twice)."""
    nodes = start_network(configs, logs)
    name = sorted(nodes)[0]
    node, store = nodes[name], configs[name].parent / "state" / "results.sqlite"
    watcher = StoreWatcher(store, name)
    watcher.start()
    try:
        time.sleep(seconds / 2)
        node.kill()
        killed_at = time.monotonic()
        node.start()
        status = node.wait_for(training, timeout=180) or {}
        time.sleep(seconds / 2)
    finally:
        watcher.stop()
        codes = stop_all(nodes.values())
    resumed = status.get("resumed_from_step") or 0
    final = final_metric_keys(store, name)
    redone = {k for k, t in watcher.seen.items() if k[1] > resumed and t < killed_at}
    lost = sorted(k for k in watcher.seen if k not in final and k not in redone)
    return {
        "seconds": seconds, "reads": watcher.reads, "errors": len(watcher.errors),
        "error_samples": watcher.errors[:5],
        "locked_errors": sum("locked" in e for e in watcher.errors),
        "rows_seen": len(watcher.seen), "rows_at_end": len(final),
        "rows_after_resume_point_rewritten": len(redone), "rows_lost": len(lost),
        "lost_samples": [list(k) for k in lost[:5]], "resumed_from_step": resumed,
        "writer_skipped_writes": node.all_logs().count("results store write skipped"),
        "exit_codes": codes, "store": store_integrity(store),
    }  # fmt: skip
