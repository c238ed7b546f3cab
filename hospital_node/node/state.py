"""Small durable files in a node's state folder: the boot epoch and the status.json snapshot."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, TextIO

from hospital_node.diskerrors import disk_hint

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\.(.+)\.tmp-(\d+)$")  # what save_checkpoint and write_json leave on a crash
LOCK_FILE = "node.lock"


class NodeStateError(RuntimeError):
    """A state file that cannot be read or written; the message says what to do."""


def write_json(path: Path, payload: dict[str, Any], *, durable: bool = True) -> None:
    """Write JSON atomically: temp file in the same folder, (fsync), rename, (fsync folder).

    A failed write (e.g. a full disk) removes its temp file and raises OSError naming the file
    and what to do; the previous version of the file stays.
    """
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True, default=str)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(
            exc.errno, f"cannot write {path}: {exc.strerror or exc}; {disk_hint(exc)}"
        ) from exc


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file does not exist."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise NodeStateError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise NodeStateError(f"{path} does not hold a JSON object")
    return value


def next_boot_epoch(path: Path, *, floor: int = 0) -> int:
    """Read the last boot epoch (at least `floor`), add one and persist it durably; call it
    before sending anything.

    Every sequence number of this boot then exceeds every one of earlier boots, whatever the
    checkpoint holds (docs/wire-format.md, section 6). A lost file would restart at 1 and make
    the peers refuse this node's messages as stale: it must live on the persistent volume.
    """
    from consensus.wire import MAX_BOOT_EPOCH  # imports torch: only a starting node needs it

    try:
        saved = read_json(path)
    except NodeStateError as exc:
        raise NodeStateError(
            f"{exc}; the boot-epoch file is damaged. Restore it from a backup, or delete it and "
            "restart the neighbours too (their gates remember this node's old sequence numbers)"
        ) from exc
    previous = 0 if saved is None else saved.get("boot_epoch")
    if not isinstance(previous, int) or not 0 <= previous < MAX_BOOT_EPOCH:
        raise NodeStateError(f"{path}: boot_epoch {previous!r} is not an integer in range")
    epoch = max(previous, floor) + 1
    write_json(path, {"boot_epoch": epoch})
    return epoch


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files that killed processes left behind (never the files of this process)."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TEMP.match(path.name)
        if match and int(match.group(2)) != os.getpid():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d partial files left by an earlier crash in %s", len(removed), directory)
    return removed


def lock_state_dir(state_dir: Path) -> TextIO:
    """Hold STATE_DIR/node.lock exclusively while the returned file stays open.

    A running node holds it, so a second node on the same state (two containers on one
    volume) and offline tools (`hospital-node reset-edge`) are refused. flock works across
    processes and containers sharing the volume, and the kernel drops it when the holder dies.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise NodeStateError(
            f"{state_dir} is in use by another process (pid {holder} in its namespace): a "
            "running node? Stop it first (podman stop -t 60 ...)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
