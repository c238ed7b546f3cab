"""Offline repairs on a stopped node's state: forget what one neighbour's sequence numbers were."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from consensus.wire import forget_sender
from hospital_node.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint_file,
    save_checkpoint,
)
from hospital_node.node.config import NodeConfig
from hospital_node.node.state import NodeStateError, lock_state_dir, read_json

log = logging.getLogger(__name__)

_RUNNING_STATES = ("starting", "joining", "training", "stopped_sending", "budget_spent")
_FRESH_STATUS_S = 15.0  # a status.json this recent, saying "running", means a node is up


@dataclass(frozen=True)
class EdgeReset:
    """One checkpoint rewritten: the last sequences it held for the peer (None: none)."""

    checkpoint: Path
    swap_sequence: int | None
    model_sequence: int | None


def reset_edge(config: NodeConfig, peer: str) -> list[EdgeReset]:
    """Make the stopped node forget the last sequence numbers it accepted from `peer`.

    Rewrites every checkpoint (atomically) without that peer's entry in the swap and model
    gates, so the next message from `peer` is taken whatever its sequence number within the
    first-contact bound (docs/wire-format.md, section 6). Everything else stays: the model,
    the duals, the counters, the privacy record. Refused while a node runs on this state.
    """
    if peer not in config.peer_names:
        raise NodeStateError(
            f"{peer!r} is not a neighbour in this node.toml (neighbours: "
            f"{', '.join(config.peer_names)})"
        )
    lock = lock_state_dir(config.paths.state_dir)
    try:
        _refuse_if_running(config)
        return [r for path in list_checkpoints(config.paths.checkpoint_dir)
                if (r := _reset_one(path, peer)) is not None]  # fmt: skip
    finally:
        lock.close()


def _refuse_if_running(config: NodeConfig) -> None:
    """A node of an older release holds no lock: go by its status.json too."""
    status = read_json(config.paths.status_file) or {}
    age = time.time() - float(status.get("updated_at", 0.0))
    if status.get("state") in _RUNNING_STATES and age < _FRESH_STATUS_S:
        raise NodeStateError(
            f"{config.paths.status_file} says the node is {status['state']} ({age:.0f} s ago): "
            "stop it first; if it is stopped (killed), wait a few seconds and try again"
        )


def _reset_one(path: Path, peer: str) -> EdgeReset | None:
    try:
        step, state = load_checkpoint_file(path)
    except CheckpointError as exc:
        log.warning("skipping unreadable checkpoint: %s", exc)
        return None
    gates = state.get("handler", {}).get("gates", {})
    removed: dict[str, int | None] = {}
    for kind in ("swap", "model"):
        gates[kind], removed[kind] = forget_sender(gates.get(kind, {}), peer)
    if removed["swap"] is None and removed["model"] is None:
        return None
    save_checkpoint(path.parent, step, state, keep=len(list_checkpoints(path.parent)))
    return EdgeReset(
        checkpoint=path, swap_sequence=removed["swap"], model_sequence=removed["model"]
    )
