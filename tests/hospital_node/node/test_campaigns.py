"""Short versions of the reliability campaigns (benchmarks/campaign_*.py) on 3-node loopback
networks of node OS processes: the message ledger of a mini-soak, faults while training (a
damaging proxy, a store reader, kill -9), a full state disk, and a hostile peer."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from benchmarks.campaign_disk import half_a_checkpoint, limit_file_size, newest_checkpoint
from benchmarks.campaign_hostile_peers import EDGES_3, hostile_network, run_campaign
from benchmarks.campaign_kills import StoreWatcher, final_metric_keys, kill_round, start_network
from benchmarks.campaign_net import (
    NodeProc,
    checkpoint_check,
    ledger,
    listen_port,
    point_peer_at,
    state_checks,
    stop_all,
    training,
)
from benchmarks.campaign_proxy import run_phases
from benchmarks.campaign_soak import SoakPlan, run_soak
from benchmarks.fault_proxy import FaultPlan, FaultProxy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
SITES = ("N1", "N2", "N3")


def all_sound(configs: dict[str, Path]) -> bool:
    checks = state_checks(configs).values()
    return all(c["store"] == "ok" and c["checkpoints"]["corrupt"] == 0
               and not c["checkpoints"]["temp_files"] for c in checks)  # fmt: skip


def test_mini_soak_accounts_for_every_message(tmp_path, node_data) -> None:
    # N3 runs exchange privacy with a tiny budget: it stops sending within seconds, so the
    # ledger covers withheld messages as well as delivered ones
    plan = SoakPlan(nodes=3, chords=0, seconds=8.0, sample_s=2.0, warmup_s=3.0,
                    steps_per_second=4.0, swap_interval_s=0.3, privacy_budget=6.0)  # fmt: skip

    result = run_soak(tmp_path, plan, data=node_data)

    assert result["exit_codes"] == dict.fromkeys(SITES, 0)
    totals = result["ledger"]["totals"]
    assert totals["sent"] > 0 and totals["withheld"] > 0, totals
    assert totals["unaccounted"] == 0 and totals["not_applied"] == 0, result["ledger"]
    assert totals["refused"] == 0
    assert all(s["store"] == "ok" and s["checkpoints"]["files"] > 0
               and s["checkpoints"]["corrupt"] == 0 for s in result["state"].values())  # fmt: skip
    assert {r["node"] for r in result["samples"]} == set(SITES)
    assert all(r["threads"] > 0 and r["fds"] > 0 and r["anon_mb"] > 0 for r in result["samples"])


def test_faults_proxy_reader_and_kill(tmp_path, build_network) -> None:
    configs = build_network(tmp_path / "net")
    proxy = FaultProxy(target_port=listen_port(configs["N2"]), seed=7)
    point_peer_at(configs["N1"], "N2", proxy.start())  # N1 starts every N1--N2 swap
    nodes: dict[str, NodeProc] = {}
    try:
        nodes = start_network(configs, tmp_path / "logs")
        store = configs["N1"].parent / "state" / "results.sqlite"
        watcher = StoreWatcher(store, "N1")
        watcher.start()
        phases = run_phases(nodes, proxy, 4.0, (
            ("corrupt", FaultPlan(corrupt=0.3)), ("truncate", FaultPlan(truncate=0.2)),
            ("clean", FaultPlan())))  # fmt: skip
        killed = kill_round({"N1": nodes["N1"]}, random.Random(3))
        time.sleep(2.0)
        watcher.stop()
    finally:
        codes = stop_all(nodes.values())
        proxy.stop()

    corrupt, truncate, clean = phases
    assert corrupt["proxy"].get("corrupted", 0) > 0 and truncate["proxy"].get("truncated", 0) > 0
    assert sum(p["gate_refused"] for p in phases) == 0  # TLS caught every damaged byte
    assert corrupt["calls_ok"] + corrupt["calls_failed"] < corrupt["attempts"]  # retried
    assert clean["b_received"] > 0 and clean["a_received"] > 0  # swaps went on after the faults
    assert all(p["all_alive"] and p["all_trained"] for p in phases)
    assert killed["resumed_ok"] and killed["rejoined"] and killed["store_at_kill"] == "ok"
    assert killed["corrupt_checkpoints_at_kill"] == 0
    assert codes == dict.fromkeys(SITES, 0)
    assert watcher.reads > 10 and watcher.errors == []  # never 'database is locked'
    final = final_metric_keys(store, "N1")
    resumed = killed["resumed_from_step"]
    assert all(k in final for k in watcher.seen if k[1] <= resumed)  # nothing lost
    assert all_sound(configs)
    final_status = {n: node.status() or {} for n, node in nodes.items()}
    books = ledger(final_status)["edges"]
    assert books["N2->N3"]["unaccounted"] == 0 and books["N3->N2"]["unaccounted"] == 0


def test_a_full_disk_is_reported_and_training_goes_on(tmp_path, build_network) -> None:
    configs = build_network(tmp_path / "net", settings={"training": {"checkpoint_every": 5}})
    node = NodeProc("N1", configs["N1"], tmp_path / "logs").start()
    try:
        assert node.wait_for(lambda s: training(s) and s.get("last_checkpoint"), 120), (
            node.log_text()[-2000:]
        )
        before = newest_checkpoint(node)
        limit_file_size(node.pid, half_a_checkpoint(node))  # checkpoints fail with EFBIG
        deadline = time.monotonic() + 60
        while "cannot write checkpoint" not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        full = checkpoint_check(node.state_dir / "checkpoints")
        step_full = (node.status() or {}).get("step", 0)
        time.sleep(3.0)
        step_later = (node.status() or {}).get("step", 0)
        limit_file_size(node.pid, None)
        while newest_checkpoint(node) == before and time.monotonic() < deadline + 60:
            time.sleep(0.5)
        after = newest_checkpoint(node)
    finally:
        code = node.terminate()

    log = node.log_text()
    assert "ERROR" in log and "File too large; nothing half-written was left" in log, log[-3000:]
    assert "a file-size limit was hit" in log and "Training and swaps go on" in log
    assert full["temp_files"] == [] and full["corrupt"] == 0
    assert step_later > step_full  # training went on while checkpoints failed
    assert after > before and "checkpoints are written again" in log
    assert code == 0 and checkpoint_check(node.state_dir / "checkpoints")["corrupt"] == 0


def test_a_hostile_peer_changes_nothing(tmp_path, node_data) -> None:
    # short timeouts: the stalled stream is cut after 2 s, the trickling one after 4 s
    timeouts = {"exchange": {"idle_timeout_s": 2.0, "call_timeout_s": 4.0}}
    configs = hostile_network(tmp_path, node_data, EDGES_3, timeouts)

    result = run_campaign(configs, tmp_path, total=200, seed=1, slow=2, bursts=1, valid=3)

    assert result["messages"] == 200 and result["accepted"] == result["valid_sent"] == 3
    assert result["after_phase_A"]["dual_for_n2_unchanged"]
    assert result["after_phase_A"]["gate_remembers_n2"] is None
    assert result["after_phase_A"]["honest_duals_moved"]
    assert result["gate_refusals_match_node"]
    assert result["n2_received"] == 3 == result["n2_applied"] + result["n2_dropped"]
    assert result["final_dual_is_valid_message"]
    assert result["final_gate_last_n2"] == result["last_valid_sequence"]
    assert result["target_alive_until_stop"] and result["target_errors_in_log"] == 0
    kinds = result["per_kind"]  # the stalled stream hit the idle timeout, the trickle the limit
    assert (
        kinds.get("S/stall/CANCELLED/CANCELLED")
        == kinds.get("S/slow_loris/CANCELLED/CANCELLED")
        == 1
    )
    refusals = result["node_server_refusals"]
    assert (
        refusals.get("refused.idle_timeout", 0) >= 1
        and refusals.get("refused.call_timeout", 0) >= 1
    )
    assert result["steps_during_attack"] > 0 and result["honest_swaps_during_attack"] > 0
    assert all(s["store"] == "ok" and s["checkpoints"]["corrupt"] == 0
               for s in result["state"].values())  # fmt: skip
