"""The node's own settings tables: its paths, listening port, peers, run loop and swaps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

JOIN_MODES = ("fetch", "scratch")
INITIATE_MODES = ("lower", "both")


@dataclass(frozen=True, kw_only=True)
class PeerSpec:
    """One neighbour: its name (its certificate CN) and where to dial it."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class NodePaths:
    """Where the node reads and writes; relative entries in node.toml are relative to its folder."""

    site_dir: Path
    results_store: Path
    checkpoint_dir: Path
    state_dir: Path  # boot_epoch.json, status.json, the data cache by default
    ca_cert: Path
    cert: Path
    key: Path

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def boot_epoch_file(self) -> Path:
        return self.state_dir / "boot_epoch.json"

    @property
    def privacy_ledger(self) -> Path:
        """The spent epsilon, rewritten (fsynced) before any private message leaves."""
        return self.state_dir / "privacy.json"


@dataclass(frozen=True, kw_only=True)
class ListenSettings:
    """The one TCP port of the node: what it binds and what its neighbours dial."""

    host: str = "0.0.0.0"
    port: int = 50051
    advertised_host: str = "127.0.0.1"

    @property
    def local_address(self) -> str:
        """Where a process on this machine reaches the node (the status command's health check)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """[run]: how the node's loop paces and reports itself; every field has a default."""

    max_steps_per_second: float = 0.0  # 0 = as fast as the machine goes
    checkpoint_keep: int = 3
    log_every: int = 20  # steps between metric rows in the results store
    status_every_s: float = 2.0  # how often STATE_DIR/status.json is rewritten

    def __post_init__(self) -> None:
        if self.checkpoint_keep < 1 or self.log_every < 1:
            raise ValueError("[run] checkpoint_keep and log_every must be >= 1")
        if self.max_steps_per_second < 0 or self.status_every_s <= 0:
            raise ValueError("[run] max_steps_per_second must be >= 0 and status_every_s > 0")


@dataclass(frozen=True, kw_only=True)
class ExchangeSettings:
    """Swaps with the neighbours ([exchange] in node.toml); every field has a default.

    `initiate = "lower"`: on each edge only the end whose name sorts first starts swaps (one
    swap stream per edge, half the traffic); "both": both ends do, twice the swap rate.
    `join = "fetch"`: a node with no checkpoint first asks its neighbours for their current
    model (for `join_timeout_s`), then starts from scratch if none answered.
    `idle_timeout_s`: the server cancels a call when the caller's next frame does not arrive
    within this; `call_timeout_s`: whole-call limit (0: `base_deadline_s` plus both directions
    of the largest message at 1 MB/s). A stalled neighbour holds its call slot no longer.
    """

    mean_interval_s: float = 10.0
    initiate: str = "lower"
    max_parallel: int = 2
    join: str = "fetch"
    join_timeout_s: float = 30.0
    retry_max_attempts: int = 5
    retry_initial_backoff_s: float = 1.0
    retry_max_backoff_s: float = 30.0
    retry_give_up_after_s: float = 300.0
    reconnect_backoff_max_s: float = 10.0
    base_deadline_s: float = 10.0
    shutdown_grace_s: float = 5.0
    max_pending_per_peer: int = 4  # received, validated messages waiting for the next step
    idle_timeout_s: float = 5.0
    call_timeout_s: float = 0.0  # 0: derived from the message size

    def __post_init__(self) -> None:
        if self.join not in JOIN_MODES:
            raise ValueError(f"[exchange] join={self.join!r}: choose one of {JOIN_MODES}")
        if self.initiate not in INITIATE_MODES:
            raise ValueError(f"[exchange] initiate={self.initiate!r}: choose {INITIATE_MODES}")
        positive = (
            "mean_interval_s",
            "retry_initial_backoff_s",
            "base_deadline_s",
            "idle_timeout_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"[exchange] {name} must be > 0, got {getattr(self, name)}")
        if self.call_timeout_s < 0:
            raise ValueError(f"[exchange] call_timeout_s must be >= 0, got {self.call_timeout_s}")
        if min(self.max_parallel, self.retry_max_attempts, self.max_pending_per_peer) < 1:
            raise ValueError(
                "[exchange] max_parallel, retry_max_attempts, max_pending_per_peer must be >= 1"
            )
