"""Hostile peers against a live node: 10,000 malformed or adversarial messages from a neighbour with
a valid certificate (N2's real bundle) while the node (N1, a `hospital-node run` process) trains
and swaps with its honest neighbours N3 and N4 (N2's own node is not running).

Phases: A, junk only (no valid message from N2 yet); S, stalled and slow-loris streams with
bursts of concurrent streams beside them; B, junk mixed with a few valid messages, replays and
stale sequence numbers. Checks: N1 never crashes and keeps training and swapping; every hostile
message is refused (attacker-side outcomes = the node's server and gate counters); refused
messages change nothing: after A the dual N1 keeps for N2 is bit for bit its initial value and
the gate remembers no N2 sequence; at the end it equals the valid messages' tensors and the
gate's last N2 sequence is the last valid one; memory, threads and descriptors stay bounded.

    nohup nice -n 10 python -m benchmarks.campaign_hostile_peers &
Writes benchmarks/results/campaigns/hostile_peers.json (the per-kind outcomes included).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_hostile_peer import Side
from benchmarks.campaign_kills import start_network
from benchmarks.campaign_net import (
    NodeProc,
    base_settings,
    listen_port,
    machine,
    merge,
    prepare_sites,
    proc_sample,
    provision_network,
    state_checks,
    stop_all,
    training,
)
from benchmarks.hostile_messages import GATE_KINDS, TRANSPORT_KINDS, HostilePeer
from consensus.wire.codec import REASONS
from hospital_node.checkpoint import list_checkpoints, load_checkpoint_file

OUT = Path("benchmarks/results/campaigns/hostile_peers.json")
WORK = Path("build/campaigns/hostile")
EDGES = [["N1", "N2"], ["N2", "N3"], ["N3", "N4"], ["N1", "N4"], ["N1", "N3"]]
EDGES_3 = [["N1", "N2"], ["N2", "N3"], ["N1", "N3"]]  # the short version: one honest neighbour


def hostile_network(
    work: Path, data: Path, edges: list[list[str]] = EDGES, extra: dict | None = None
) -> dict[str, Path]:
    """N1 the target, N2 the attacker's identity (no node), the others honest neighbours;
    `extra` settings are merged in (the short test shortens the slow streams' timeouts)."""
    settings = merge(base_settings(steps_per_second=2.0, swap_interval_s=1.0),
                     {"training": {"checkpoint_every": 10}})  # fmt: skip
    settings = merge(settings, extra or {})
    configs = provision_network(work / "net", data, edges, settings)
    configs.pop("N2")  # its bundle is the attacker's; no N2 node runs
    return configs


def honest_swaps(status: dict[str, Any]) -> bool:
    """Training, and a message from every running neighbour (N2 never answers)."""
    peers = {p: v for p, v in status.get("peers", {}).items() if p != "N2"}
    return training(status) and all(v.get("received_this_boot", 0) > 0 for v in peers.values())


def make_peer(toml: Path, address: str, seed: int) -> HostilePeer:
    """N2's identity and a valid, distinctive N2 -> N1 message (one seeded step of N2's model)."""
    side = Side(toml, private=False)
    generator = torch.Generator().manual_seed(seed)
    side.algorithm.local_step({n: torch.randn(p.shape, generator=generator)
                               for n, p in side.params.items()})  # fmt: skip
    valid = {k: v.detach().clone() for k, v in side.algorithm.outgoing("N1").items()}
    return HostilePeer(tls=side.tls, address=address, method=side.algorithm.method,
                       schema_hash=side.algorithm.wire_schema().digest, valid=valid,
                       rng=random.Random(seed))  # fmt: skip


class Watch:
    """Samples the target's memory, threads and descriptors every half second."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples = pid, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.samples.append(proc_sample(self.pid))
            except OSError:
                return

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        return {key: max(s[key] for s in self.samples) for key in self.samples[0]}


def schedule(weights: dict[str, int], count: int, rng: random.Random) -> list[str]:
    total = sum(weights.values())
    kinds = [k for k, w in weights.items() for _ in range(int(w * count / total))]
    kinds += rng.choices(list(weights), weights=list(weights.values()), k=count - len(kinds))
    rng.shuffle(kinds)
    return kinds


def run_kinds(peer: HostilePeer, kinds: list[str], tally: Counter, label: str) -> None:
    for i, kind in enumerate(kinds, 1):
        status, reason = getattr(peer, kind)()
        tally[(label, kind, status, reason)] += 1
        if i % 500 == 0:
            print(f"[hostile] {label}: {i}/{len(kinds)}", flush=True)


def slow_phase(peer: HostilePeer, count: int, bursts: int, tally: Counter) -> None:
    """`count` slow streams, one at a time (the node takes one call per neighbour, so a second
    one beside it would only be refused `busy` and never trickle), alternating stalled and
    slow-loris, with `bursts` bursts of 16 streams beside them."""
    slow = ["stall", "slow_loris"] * (count // 2)
    lock = threading.Lock()

    def one(kind: str) -> None:
        status, reason = getattr(peer, kind)()
        with lock:
            tally[("S", kind, status, reason)] += 1

    done = 0
    for i, kind in enumerate(slow, 1):
        thread = threading.Thread(target=one, args=(kind,))
        thread.start()
        for _ in range(bursts * i // len(slow) - done):
            time.sleep(0.5)
            for status, reason in peer.burst(16):
                with lock:
                    tally[("S", "burst", status, reason)] += 1
            done += 1
        thread.join()


def dual_for(path: Path, peer: str) -> dict[str, torch.Tensor]:
    _, state = load_checkpoint_file(path)
    tensors = state["algorithm"]["tensors"]
    prefix = f"dual/{peer}/"
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def gate_last(path: Path, peer: str) -> int | None:
    _, state = load_checkpoint_file(path)
    return state["handler"]["gates"]["swap"]["last_sequence"].get(peer)


def wait_new_checkpoint(node: NodeProc, after: Path | None, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list_checkpoints(node.state_dir / "checkpoints")
        if files and (after is None or files[-1].name > after.name):
            time.sleep(0.5)  # renamed into place: complete
            return files[-1]
        time.sleep(0.5)
    raise RuntimeError("no new checkpoint")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def observed(node: NodeProc) -> dict[str, Any]:
    status = node.status() or {}
    peers = status.get("peers", {})
    return {"step": status.get("step", 0), "server": status.get("server", {}),
            "n2": peers.get("N2", {}),
            "honest_received": sum(peers.get(p, {}).get("received_this_boot", 0)
                                   for p in ("N3", "N4"))}  # fmt: skip


def summarise(tally: Counter, before: dict, after: dict, valid_sent: int) -> dict[str, Any]:
    """Attacker-side outcomes against the node's own counters."""
    by_reason: Counter[str] = Counter()
    for (_, _, status, reason), n in tally.items():
        by_reason["accepted" if status == "OK" else f"{status}:{reason}"] += n
    server = {k: v - before["server"].get(k, 0) for k, v in after["server"].items()
              if k.startswith("refused.") or k == "aborted_in_transfer"}  # fmt: skip
    n2 = after["n2"]
    gate = {r: n for k, n in by_reason.items() if k.startswith("INVALID_ARGUMENT:")
            and (r := k.split(":", 1)[1]) in REASONS and r != "too_large"}  # fmt: skip
    return {
        "gate_refusals_match_node": gate == n2.get("rejected", {}),
        "messages": sum(tally.values()),
        "accepted": by_reason["accepted"], "valid_sent": valid_sent,
        "attacker_saw": dict(sorted(by_reason.items())),
        "node_server_refusals": {k: v for k, v in sorted(server.items()) if v},
        "node_gate_rejections_from_n2": n2.get("rejected", {}),
        "n2_received": n2.get("messages_received"), "n2_applied": n2.get("applied"),
        "n2_dropped": n2.get("dropped"), "n2_messages_sent_to_attacker": n2.get("messages_sent"),
        "steps_during_attack": after["step"] - before["step"],
        "honest_swaps_during_attack": after["honest_received"] - before["honest_received"],
    }  # fmt: skip


def run_campaign(
    configs: dict[str, Path],
    work: Path,
    *,
    total: int,
    seed: int,
    slow: int = 40,
    bursts: int = 20,
    valid: int = 20,
) -> dict[str, Any]:
    """`total` hostile messages in phases A, S (`slow` slow streams and `bursts` bursts of 16)
    and B (with `valid` valid messages) against N1 of `configs` (hostile_network)."""
    nodes = start_network(configs, work / "logs", honest_swaps)
    target, peer = nodes["N1"], None
    rng, tally, result = random.Random(seed), Counter(), {}
    try:
        peer = make_peer(configs["N1"].parents[1] / "N2" / "node.toml",
                         f"127.0.0.1:{listen_port(configs['N1'])}", seed)  # fmt: skip
        first = wait_new_checkpoint(target, None)
        # read now: checkpoint rotation (keep = 3) removes `first` during phase A
        initial_dual, initial_honest = dual_for(first, "N2"), dual_for(first, "N3")
        before = observed(target)
        watch, base = Watch(target.pid), proc_sample(target.pid)
        rest = total - slow - bursts * 16 - valid
        phase_a = {k: w for k, w in {**GATE_KINDS, **TRANSPORT_KINDS}.items()
                   if k not in ("replayed", "stale")}  # fmt: skip
        run_kinds(peer, schedule(phase_a, rest // 2, rng), tally, "A")
        after_a = wait_new_checkpoint(target, first)
        result["after_phase_A"] = {
            "dual_for_n2_unchanged": same(initial_dual, dual_for(after_a, "N2")),
            "gate_remembers_n2": gate_last(after_a, "N2"),
            "honest_duals_moved": not same(initial_honest, dual_for(after_a, "N3")),
            "honest_dual": "N3",
        }  # fmt: skip
        slow_phase(peer, slow, bursts, tally)
        kinds = schedule({**GATE_KINDS, **TRANSPORT_KINDS}, rest - rest // 2, rng)
        kinds += ["valid_message"] * valid
        rng.shuffle(kinds)
        run_kinds(peer, kinds, tally, "B")
        time.sleep(3.0)  # a status.json after the last message
        after, peak = observed(target), watch.stop()
    finally:
        if peer is not None:
            peer.close()
        codes = stop_all(nodes.values())
    final = list_checkpoints(target.state_dir / "checkpoints")[-1]
    last_valid = peer.accepted[-1][0] if peer.accepted else None
    result.update(summarise(tally, before, after, valid))
    result.update(
        final_dual_is_valid_message=same(
            {k.removeprefix("y/"): v for k, v in peer.valid.items() if k.startswith("y/")},
            dual_for(final, "N2")),
        final_gate_last_n2=gate_last(final, "N2"), last_valid_sequence=last_valid,
        target_alive_until_stop=codes.get("N1") == 0, exit_codes=codes,
        before_attack=base, peak_during_attack=peak,
        target_errors_in_log=sum(1 for line in target.all_logs().splitlines()
                                 if " ERROR " in line or "Traceback" in line),
        state=state_checks(configs),
        per_kind={f"{p}/{k}/{s}/{r}": n for (p, k, s, r), n in sorted(tally.items())},
    )  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_sites(args.work, 4)
    result = {"command": "python -m benchmarks.campaign_hostile_peers "
              + " ".join(argv or sys.argv[1:]), "machine_at_start": machine()}  # fmt: skip
    started = time.monotonic()
    configs = hostile_network(args.work, data)
    result.update(run_campaign(configs, args.work, total=args.messages, seed=args.seed))
    result.update(seconds=round(time.monotonic() - started, 1), machine_at_end=machine())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_kind"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
