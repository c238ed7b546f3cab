"""Helpers for the node tests: settings, free ports, a node OS process, status predicates."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SITES = ("N1", "N2", "N3")
IMAGE_SIZE = 32
_BIN = Path(sys.executable).parent / "hospital-node"
NODE_COMMAND = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "hospital_node.cli"]

# Fast settings for loopback tests: small batches, capped step rate (the machine is shared),
# frequent swaps, checkpoints and status files, short retries.
TEST_SETTINGS: dict[str, dict[str, Any]] = {
    "training": {"batch_size": 8, "checkpoint_every": 10},
    "run": {"max_steps_per_second": 8.0, "log_every": 10, "status_every_s": 0.5},
    "evaluation": {"every": 40},
    "exchange": {
        "mean_interval_s": 0.5,
        "join_timeout_s": 3.0,
        "retry_max_attempts": 2,
        "retry_initial_backoff_s": 0.2,
        "retry_max_backoff_s": 1.0,
        "retry_give_up_after_s": 5.0,
        "reconnect_backoff_max_s": 1.0,
        "base_deadline_s": 5.0,
        "shutdown_grace_s": 1.0,
    },
}


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (closed again: a small race, accepted)."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in base.items()}
    for table, values in extra.items():
        out.setdefault(table, {}).update(values)
    return out


class NodeProcess:
    """One `hospital-node run` OS process; its log goes to a file the failures print."""

    def __init__(self, name: str, config: Path, log_dir: Path) -> None:
        self.name = name
        self.config = config
        self.state_dir = config.parent / "state"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *extra: str) -> NodeProcess:
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*NODE_COMMAND, "run", "--config", str(self.config), *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any] | None:
        """This process's status.json (None while it has not written one yet)."""
        try:
            status = json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return status if status.get("pid") == self.pid else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll status.json until `predicate` holds; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None and predicate(status):
                return status
            if not self.alive():
                pytest.fail(f"{self.name} exited ({self.proc.returncode}) before {what}:\n"
                            f"{self.log_tail()}")  # fmt: skip
            time.sleep(0.25)
        pytest.fail(f"{self.name}: no '{what}' within {timeout:.0f} s:\n{self.log_tail()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait (SIGKILL after `timeout`); the exit status."""
        if self.proc is None:
            return 0
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} ignored SIGTERM for {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)


def swapped_with_all(minimum: int = 1) -> Callable[[dict[str, Any]], bool]:
    """Predicate: this boot received and queued >= `minimum` messages from every neighbour."""

    def check(status: dict[str, Any]) -> bool:
        peers = status.get("peers", {})
        return status.get("state") == "training" and all(
            p.get("received_this_boot", 0) >= minimum for p in peers.values()
        )

    return check
