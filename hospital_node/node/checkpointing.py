"""The node's checkpoint writer: atomic saves; a failed write (disk full) is reported, not fatal."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hospital_node.checkpoint import CheckpointWriteError, save_checkpoint
from hospital_node.node.config import NodeConfig

log = logging.getLogger(__name__)


class NodeCheckpoints:
    """Writes a node's checkpoints and remembers the last one and any failure streak.

    A checkpoint that cannot be written (disk full, file-size limit, I/O error) leaves nothing
    half-written (save_checkpoint) and does not stop the node: training and swaps go on, the
    error is logged once per streak (ERROR, with what to do) and shown in status.json
    (`checkpoint_failing`), and the next interval tries again; the streak's end is logged too.
    A crash meanwhile resumes from the newest complete checkpoint, as after any crash.
    """

    def __init__(self, *, name: str, directory: Path, keep: int) -> None:
        self.name = name
        self.directory = directory
        self.keep = keep
        self.last: dict[str, Any] | None = None  # step, path, at of the last one written
        self.failing: dict[str, Any] | None = None  # since_step, failures, error, at

    @classmethod
    def for_node(cls, config: NodeConfig) -> NodeCheckpoints:
        """The writer of a node's checkpoint folder, keeping `[run] checkpoint_keep` files."""
        return cls(name=config.name, directory=config.paths.checkpoint_dir,
                   keep=config.run.checkpoint_keep)  # fmt: skip

    def save(self, step: int, state: Mapping[str, Any]) -> bool:
        """Write the checkpoint of `step`; False (logged) when it could not be written."""
        try:
            path = save_checkpoint(self.directory, step, state, keep=self.keep)
        except CheckpointWriteError as exc:
            self._failed(step, exc)
            return False
        if self.failing is not None:
            log.warning("%s: checkpoints are written again (step %d) after %d failed since step "
                        "%d", self.name, step, self.failing["failures"],
                        self.failing["since_step"])  # fmt: skip
            self.failing = None
        self.last = {"step": step, "path": str(path), "at": time.time()}
        return True

    def _failed(self, step: int, exc: CheckpointWriteError) -> None:
        if self.failing is None:
            log.error("%s: %s. Training and swaps go on; the node tries again at its next "
                      "checkpoint and resumes from the newest complete one if it stops meanwhile",
                      self.name, exc)  # fmt: skip
            self.failing = {"since_step": step, "failures": 0}
        else:
            log.debug("%s: checkpoint %d not written either: %s", self.name, step, exc)
        self.failing.update(failures=self.failing["failures"] + 1, error=str(exc), at=time.time())
