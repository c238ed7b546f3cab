"""Shared harness of the reliability campaigns: synthetic sites, a provisioned loopback network of
`hospital-node run` OS processes, /proc sampling, the message ledger and the state checks."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.bench_node import free_ports
from hospital_node.checkpoint import CheckpointError, list_checkpoints, load_checkpoint_file

ROOT = Path(__file__).resolve().parents[1]
NODE_COMMAND = [sys.executable, "-m", "hospital_node.cli"]
IMAGE_SIZE = 32
Status = dict[str, Any]


def site_names(count: int) -> tuple[str, ...]:
    return tuple(f"N{i}" for i in range(1, count + 1))


def machine() -> dict[str, Any]:
    """What the figures were measured on (the machine is shared: the load average matters)."""
    return {
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def prepare_sites(work: Path, count: int, *, per_site: int = 40) -> Path:
    """`count` synthetic hospitals (32 px) with a warm decode cache, reused between runs."""
    from data_tools.synth import SynthConfig, generate_dataset
    from hospital_node.data.site import DataConfig, load_site

    data = work / f"data-{count}x{per_site}"
    names = site_names(count)
    if not (data / names[-1] / "labels.csv").is_file():
        shutil.rmtree(data, ignore_errors=True)
        synth = SynthConfig(sites=count, per_site=per_site, test_size=4, size=IMAGE_SIZE,
                            missing_per_site=0, workers=1)  # fmt: skip
        generate_dataset(synth, data, progress=False)
    for site in names:
        load_site(data / site, DataConfig(image_size=IMAGE_SIZE, cache_dir=data / "cache"))
    return data


def ring_with_chords(names: tuple[str, ...], chords: int) -> list[list[str]]:
    """A ring through `names` plus `chords` diameters (node 2k to node 2k + n/2)."""
    n = len(names)
    edges = {tuple(sorted((names[i], names[(i + 1) % n]))) for i in range(n)}
    for k in range(chords):
        a, b = (2 * k) % n, (2 * k + n // 2) % n
        edges.add(tuple(sorted((names[a], names[b]))))
    return [list(e) for e in sorted(edges)]


def base_settings(*, steps_per_second: float, swap_interval_s: float) -> dict[str, dict]:
    """Settings for campaign nodes: compact model at 32 px, batch 8, capped step rate."""
    return {
        "data": {"image_size": IMAGE_SIZE},
        "training": {"batch_size": 8, "checkpoint_every": 20},
        "evaluation": {"every": 0},
        "run": {"max_steps_per_second": steps_per_second, "log_every": 10,
                "status_every_s": 1.0},
        "exchange": {"mean_interval_s": swap_interval_s, "join": "scratch",
                     "retry_max_attempts": 3, "retry_initial_backoff_s": 0.2,
                     "retry_max_backoff_s": 2.0, "retry_give_up_after_s": 15.0,
                     "reconnect_backoff_max_s": 2.0, "base_deadline_s": 10.0,
                     "shutdown_grace_s": 2.0},
    }  # fmt: skip


def merge(base: Mapping[str, Mapping], extra: Mapping[str, Mapping]) -> dict[str, dict]:
    out = {k: dict(v) for k, v in base.items()}
    for table, values in extra.items():
        out.setdefault(table, {}).update(values)
    return out


def provision_network(
    root: Path,
    data: Path,
    edges: list[list[str]],
    settings: dict[str, dict],
    per_node: Mapping[str, dict[str, dict]] | None = None,
) -> dict[str, Path]:
    """A freshly provisioned loopback network under `root`; returns each node.toml."""
    from hospital_node.provisioning.network import parse_network
    from hospital_node.provisioning.provision import dumps_toml, provision

    shutil.rmtree(root, ignore_errors=True)
    names = sorted({n for e in edges for n in e}, key=lambda s: int(s[1:]))
    hospitals = [
        {"name": n, "host": "127.0.0.1", "listen": "127.0.0.1", "port": p,
         "site_dir": str((data / n).resolve())}
        for n, p in zip(names, free_ports(len(names)), strict=True)
    ]  # fmt: skip
    algorithm = {"method": "ecl-pdmm", "learning_rate": 0.05, "consensus_weight": 0.5}
    provision(parse_network({"name": root.name, "edges": edges, "hospitals": hospitals,
                             "algorithm": algorithm}), root)  # fmt: skip
    cache = {"data": {"cache_dir": str((data / "cache").resolve())}}
    configs = {}
    for name in names:
        path = root / name / "node.toml"
        extra = merge(merge(settings, cache), (per_node or {}).get(name, {}))
        text = path.read_text()
        if "privacy" in extra:  # provisioning wrote `[privacy] mode = "off"`: ours replaces it
            text = re.sub(r'(?m)^\[privacy\]\nmode = "off".*\n', "", text)
        path.write_text(text + "\n" + dumps_toml(extra))
        configs[name] = path
    return configs


def listen_port(config: Path) -> int:
    return int(re.search(r"(?m)^listen_port = (\d+)$", config.read_text()).group(1))


def point_peer_at(config: Path, peer: str, port: int) -> None:
    """Make the node dial `peer` at 127.0.0.1:`port` (e.g. a fault proxy); TLS still checks
    the peer's name, so the proxy sees only ciphertext."""
    text = config.read_text()
    pattern = rf'(\[\[peers\]\]\nname = "{peer}"\nhost = "[^"]+"\nport = )\d+'
    new, count = re.subn(pattern, rf"\g<1>{port}", text)
    if count != 1:
        raise ValueError(f"{config}: no [[peers]] entry for {peer}")
    config.write_text(new)


def proc_sample(pid: int) -> dict[str, float]:
    """Resident memory (MB; `anon_mb`: its anonymous part, the heap, where a leak grows, while
    the file-backed part comes and goes with the page cache), open file descriptors and
    threads of a process (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return {
        "rss_mb": int(fields["VmRSS"][0]) * 1024 / 1e6,
        "anon_mb": int(fields["RssAnon"][0]) * 1024 / 1e6,
        "peak_rss_mb": int(fields["VmHWM"][0]) * 1024 / 1e6,
        "threads": int(fields["Threads"][0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class NodeProc:
    """One `hospital-node run` OS process (niced), its log file and its status.json."""

    def __init__(self, name: str, config: Path, logs: Path, *, nice: int = 10) -> None:
        self.name, self.config, self.logs, self.nice = name, config, logs, nice
        self.state_dir = config.parent / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *extra: str) -> NodeProc:
        self.starts += 1
        self.log_path = self.logs / f"{self.name}-{self.starts}.log"
        self.logs.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                            "PYTHONPATH": str(ROOT)}  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["nice", "-n", str(self.nice), *NODE_COMMAND, "run", "--config",
                 str(self.config), *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, *, any_pid: bool = False) -> Status | None:
        """This process's status.json (None before it wrote one); `any_pid`: whoever wrote it."""
        try:
            status = json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return status if any_pid or status.get("pid") == self.pid else None

    def wait_for(self, predicate: Callable[[Status], bool], timeout: float) -> Status | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            status = self.status()
            if status is not None and predicate(status):
                return status
            time.sleep(0.25)
        return None

    def sample(self) -> dict[str, float] | None:
        try:
            return proc_sample(self.pid) if self.alive() else None
        except (FileNotFoundError, ProcessLookupError):
            return None

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def terminate(self, timeout: float = 60.0, *, signal_it: bool = True) -> int | None:
        """SIGTERM (once: a second one during the interpreter's exit would kill it) and wait;
        SIGKILL after `timeout`. The exit status (None: killed)."""
        if self.proc is None:
            return None
        if signal_it and self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_text(self) -> str:
        """The log of the current (or last) start."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def all_logs(self) -> str:
        """The logs of every start, oldest first."""
        paths = sorted(
            self.logs.glob(f"{self.name}-*.log"), key=lambda p: int(p.stem.split("-")[-1])
        )
        return "".join(p.read_text(errors="replace") for p in paths)


def stop_all(nodes: Iterable[NodeProc], timeout: float = 60.0) -> dict[str, int | None]:
    """SIGTERM every node at once (as an operator stopping the network), then wait for each."""
    nodes = list(nodes)
    for node in nodes:
        if node.alive():
            node.proc.send_signal(signal.SIGTERM)
    return {node.name: node.terminate(timeout, signal_it=False) for node in nodes}


def training(status: Status) -> bool:
    return status.get("state") in ("training", "stopped_sending")


def swapped_since_boot(status: Status) -> bool:
    peers = status.get("peers", {})
    return training(status) and all(
        p.get("received_this_boot", 0) + p.get("withheld_received", 0) > 0 for p in peers.values()
    )


def ledger(statuses: Mapping[str, Status]) -> dict[str, Any]:
    """Every directed edge's messages from both ends' counters (status.json, cumulative).

    Sender: `sent` (delivered) and `withheld` (announced empty: its privacy budget is spent).
    Receiver: `received` (passed the gate), `refused` (the gate's rejections) and
    `withheld_received`. `unaccounted` = sent + withheld - received - refused - withheld_received
    (0: every message one end counts, the other end counts too). Receiver side also checks that
    every received message reached the algorithm: received = applied + dropped (+ pending).
    """
    keys = ("sent", "withheld", "received", "refused", "withheld_received", "unaccounted",
            "not_applied")  # fmt: skip
    edges, totals = {}, dict.fromkeys(keys, 0)
    for sender, status in sorted(statuses.items()):
        for receiver, out in sorted(status.get("peers", {}).items()):
            back = statuses.get(receiver, {}).get("peers", {}).get(sender)
            if back is None:
                continue
            row = {
                "sent": out.get("messages_sent", 0),
                "withheld": out.get("messages_withheld", 0),
                "received": back.get("messages_received", 0),
                "refused": sum((back.get("rejected") or {}).values()),
                "withheld_received": back.get("withheld_received", 0),
            }
            row["unaccounted"] = (row["sent"] + row["withheld"] - row["received"]
                                  - row["refused"] - row["withheld_received"])  # fmt: skip
            row["not_applied"] = row["received"] - back.get("applied", 0) - back.get("dropped", 0)
            edges[f"{sender}->{receiver}"] = row
            for key, value in row.items():
                totals[key] += abs(value) if key in ("unaccounted", "not_applied") else value
    return {"edges": edges, "totals": totals}


def store_integrity(path: Path) -> str:
    """SQLite's `PRAGMA integrity_check` on a results store ('ok' when sound)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
    finally:
        con.close()
    return "; ".join(str(r[0]) for r in rows)


def checkpoint_check(directory: Path) -> dict[str, Any]:
    """How many checkpoint files, how many fail to load, and any temp file left behind."""
    files, bad = list_checkpoints(directory), []
    for path in files:
        try:
            load_checkpoint_file(path)
        except CheckpointError as exc:
            bad.append(str(exc)[:200])
    temps = [p.name for p in directory.iterdir() if ".tmp-" in p.name] if directory.is_dir() else []
    return {"files": len(files), "corrupt": len(bad), "errors": bad, "temp_files": temps}


def state_checks(configs: Mapping[str, Path]) -> dict[str, Any]:
    """Per node: integrity_check of its results store and its checkpoints' state."""
    out = {}
    for name, config in sorted(configs.items()):
        state = config.parent / "state"
        out[name] = {"store": store_integrity(state / "results.sqlite"),
                     "checkpoints": checkpoint_check(state / "checkpoints")}  # fmt: skip
    return out
