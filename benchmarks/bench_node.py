"""Three node processes on loopback: throughput with swaps on vs off; kill -9 and restart.

Throughput is reported per wall-clock second and per CPU second of the node process (all its
threads, so swap work counts): on a shared machine the CPU figure is the steadier one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_tools.synth import SynthConfig, generate_dataset
from hospital_node.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint_file,
    load_latest_checkpoint,
)
from hospital_node.data.site import DataConfig, load_site
from hospital_node.provisioning.network import parse_network
from hospital_node.provisioning.provision import dumps_toml, provision

DEFAULT_OUT = Path("build/bench/node.json")
DEFAULT_WORK = Path("build/bench/node-work")
SITES = ("N1", "N2", "N3")
IMAGE_SIZE = 32
NO_SWAPS_INTERVAL_S = 1e9  # the worker exists but never fires
BIN = Path(sys.executable).parent / "hospital-node"


class Node:
    """One `hospital-node run` process and its status.json."""

    def __init__(self, name: str, config: Path, logs: Path) -> None:
        self.name, self.config, self.logs = name, config, logs
        self.status_file = config.parent / "state" / "status.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(self.logs / f"{self.name}-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN), "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        try:
            status = json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return status if self.proc and status.get("pid") == self.proc.pid else None

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc and self.proc.poll() is None:
            status = self.status()
            if status is not None and predicate(status):
                return status
            time.sleep(0.25)
        return None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process, all threads (Linux /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def training(status: dict[str, Any]) -> bool:
    return status.get("state") == "training"


def swapped_since_boot(status: dict[str, Any]) -> bool:
    peers = status.get("peers", {})
    return training(status) and all(p.get("received_this_boot", 0) > 0 for p in peers.values())


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def prepare(work: Path) -> Path:
    """Synthetic sites with a warm decode cache (reused between runs)."""
    data = work / "data"
    if not (data / "N3" / "labels.csv").is_file():
        shutil.rmtree(data, ignore_errors=True)
        synth = SynthConfig(sites=3, per_site=40, test_size=4, size=IMAGE_SIZE,
                            missing_per_site=0, workers=1)  # fmt: skip
        generate_dataset(synth, data, progress=False)
    for site in SITES:
        load_site(data / site, DataConfig(image_size=IMAGE_SIZE, cache_dir=data / "cache"))
    return data


def network(work: Path, data: Path, name: str, settings: dict[str, dict]) -> dict[str, Path]:
    """A freshly provisioned loopback ring under work/name with `settings` in every node.toml."""
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    hospitals = [
        {"name": n, "host": "127.0.0.1", "listen": "127.0.0.1", "port": p,
         "site_dir": str((data / n).resolve())}
        for n, p in zip(SITES, free_ports(len(SITES)), strict=True)
    ]  # fmt: skip
    algorithm = {"method": "ecl-pdmm", "learning_rate": 0.05}
    provision(parse_network({"name": name, "topology": "ring", "hospitals": hospitals,
                             "algorithm": algorithm}), root)  # fmt: skip
    extra = {"data": {"image_size": IMAGE_SIZE, "cache_dir": str((data / "cache").resolve())},
             **settings}  # fmt: skip
    for n in SITES:
        path = root / n / "node.toml"
        path.write_text(path.read_text() + "\n" + dumps_toml(extra))
    return {n: root / n / "node.toml" for n in SITES}


def settings(*, mean_interval_s: float, steps_per_second: float) -> dict[str, dict]:
    return {
        "training": {"batch_size": 8, "checkpoint_every": 10},
        "evaluation": {"every": 0},
        "run": {"max_steps_per_second": steps_per_second, "log_every": 20,
                "status_every_s": 0.5},
        "exchange": {"mean_interval_s": mean_interval_s, "join": "scratch",
                     "retry_max_attempts": 2, "retry_initial_backoff_s": 0.2,
                     "retry_max_backoff_s": 1.0, "retry_give_up_after_s": 5.0,
                     "reconnect_backoff_max_s": 1.0, "shutdown_grace_s": 1.0},
    }  # fmt: skip


def start_all(configs: dict[str, Path], logs: Path) -> dict[str, Node]:
    nodes = {n: Node(n, configs[n], logs) for n in SITES}
    for node in nodes.values():
        node.start()
    for node in nodes.values():
        if node.wait(training, timeout=180) is None:
            raise RuntimeError(f"{node.name} did not start; see {logs}")
    return nodes


def throughput(
    work: Path, data: Path, *, swap_interval_s: float | None, window_s: float
) -> dict[str, Any]:
    """Steps per second of each of three uncapped nodes over `window_s` seconds."""
    swaps = swap_interval_s is not None
    interval = swap_interval_s if swaps else NO_SWAPS_INTERVAL_S
    mode = "on" if swaps else "off"
    configs = network(work, data, f"throughput-{mode}",
                      settings(mean_interval_s=interval, steps_per_second=0.0))  # fmt: skip
    logs = configs["N1"].parents[1]
    nodes = start_all(configs, logs)
    try:
        time.sleep(3.0)  # warm-up: first swaps, allocator, caches
        first = {n: (node.status(), node.cpu_seconds()) for n, node in nodes.items()}
        time.sleep(window_s)
        last = {n: (node.status(), node.cpu_seconds()) for n, node in nodes.items()}
    finally:
        for node in nodes.values():
            node.stop()
    steps = {n: last[n][0]["step"] - first[n][0]["step"] for n in SITES}
    wall = {n: last[n][0]["updated_at"] - first[n][0]["updated_at"] for n in SITES}
    cpu = {n: last[n][1] - first[n][1] for n in SITES}
    applied = {
        n: sum(p["applied"] for p in last[n][0]["peers"].values())
        - sum(p["applied"] for p in first[n][0]["peers"].values())
        for n in SITES
    }
    return {
        "steps_per_second": {n: steps[n] / wall[n] for n in SITES},
        "steps_per_cpu_second": {n: steps[n] / cpu[n] for n in SITES},
        "swaps_applied_in_window": applied,
        "window_s": window_s,
        "mean_swap_interval_s_per_edge": swap_interval_s,
    }


def summarise(runs: list[dict[str, Any]], key: str) -> float:
    """Median over runs of the mean over nodes."""
    return statistics.median(statistics.fmean(r[key].values()) for r in runs)


def corrupt_files(configs: dict[str, Path]) -> tuple[int, int]:
    """(checkpoint files, files that fail to load) over every node's checkpoint folder."""
    total = bad = 0
    for config in configs.values():
        for path in list_checkpoints(config.parent / "state" / "checkpoints"):
            total += 1
            try:
                load_checkpoint_file(path)
            except CheckpointError:
                bad += 1
    return total, bad


def one_restart(nodes: dict[str, Node], rng: random.Random) -> dict[str, Any]:
    """Kill -9 a random node at a random moment, restart it; what happened."""
    time.sleep(rng.uniform(0.5, 3.0))
    victim = nodes[rng.choice(SITES)]
    others = [n for n in nodes.values() if n is not victim]
    found = load_latest_checkpoint(victim.config.parent / "state" / "checkpoints")
    before = found[0] if found else 0
    victim.stop(signal.SIGKILL)
    steps = {n.name: (n.status() or {}).get("step", -1) for n in others}
    started = time.monotonic()
    victim.start()
    status = victim.wait(training, timeout=120)
    restart_s = time.monotonic() - started
    rejoined = victim.wait(swapped_since_boot, timeout=60) is not None
    resumed = status.get("resumed_from_step") if status else None
    advanced = all((n.status() or {}).get("step", -1) > steps[n.name] for n in others)
    return {"victim": victim.name, "checkpoint_step": before, "resumed_from_step": resumed,
            "resumed_ok": resumed is not None and resumed >= before, "rejoined": rejoined,
            "others_advanced": advanced, "restart_to_training_s": round(restart_s, 2)}  # fmt: skip


def kill_restart(work: Path, data: Path, *, restarts: int, seed: int) -> dict[str, Any]:
    configs = network(work, data, "crash", settings(mean_interval_s=0.5, steps_per_second=8.0))
    nodes = start_all(configs, configs["N1"].parents[1])
    rng = random.Random(seed)
    rounds = []
    try:
        for node in nodes.values():
            node.wait(swapped_since_boot, timeout=60)
        for i in range(restarts):
            rounds.append(one_restart(nodes, rng))
            print(f"restart {i + 1}/{restarts}: {rounds[-1]}", flush=True)
    finally:
        for node in nodes.values():
            node.stop()
    total, bad = corrupt_files(configs)
    return {
        "restarts": restarts,
        "resumed_ok": sum(r["resumed_ok"] for r in rounds),
        "rejoined": sum(r["rejoined"] for r in rounds),
        "others_advanced": sum(r["others_advanced"] for r in rounds),
        "checkpoint_files": total,
        "corrupt_checkpoints": bad,
        "median_restart_to_training_s": statistics.median(
            [r["restart_to_training_s"] for r in rounds] or [float("nan")]
        ),
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--restarts", type=int, default=20, help="kill -9 / restart rounds")
    parser.add_argument("--window", type=float, default=20.0, help="throughput window (s)")
    parser.add_argument("--swap-interval", type=float, default=0.5,
                        help="mean seconds between swaps on an edge, swaps-on run")  # fmt: skip
    parser.add_argument("--pairs", type=int, default=2, help="alternating off/on runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare(args.work)
    off, on = [], []
    for _ in range(args.pairs):  # alternate, so drifting machine load hits both alike
        off.append(throughput(args.work, data, swap_interval_s=None, window_s=args.window))
        on.append(throughput(args.work, data, swap_interval_s=args.swap_interval,
                             window_s=args.window))  # fmt: skip
    crash = kill_restart(args.work, data, restarts=args.restarts, seed=args.seed)
    result = {
        "command": "python -m benchmarks.bench_node " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                    "python": platform.python_version()},
        "model": f"compact DenseNet, {IMAGE_SIZE} px, batch 8, 3 nodes on one machine",
        "throughput": {
            "swaps_off": off,
            "swaps_on": on,
            "ratio_on_off_wall": summarise(on, "steps_per_second")
            / summarise(off, "steps_per_second"),
            "ratio_on_off_cpu": summarise(on, "steps_per_cpu_second")
            / summarise(off, "steps_per_cpu_second"),
        },
        "crash": crash,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    ratios = {k: v for k, v in result["throughput"].items() if k.startswith("ratio")}
    print(json.dumps(ratios, indent=1))
    print(json.dumps({k: v for k, v in crash.items() if k != "rounds"}, indent=1))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
