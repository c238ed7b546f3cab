"""Atomic, self-checking checkpoints: safetensors tensors + JSON metadata, never pickle."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hospital_node.diskerrors import disk_hint

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{12})\.safetensors$")
FORMAT = "ecl-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that is partial, corrupt or of another format."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file-size limit, I/O error); nothing
    half-written was left behind and the earlier checkpoints are intact."""


def flatten_state(prefix: str, state: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested state into `tensors` under a path name; return the JSON rest.

    Lets objects whose state_dict() mixes tensors and plain values be saved without pickle.
    """
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().contiguous().cpu()
        return {"__tensor__": prefix}
    if isinstance(state, Mapping):
        return {str(k): flatten_state(f"{prefix}/{k}", v, tensors) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [flatten_state(f"{prefix}/{i}", v, tensors) for i, v in enumerate(state)]
    return state


def unflatten_state(meta: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(meta, dict):
        if set(meta) == {"__tensor__"}:
            return tensors[meta["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in meta.items()}
    if isinstance(meta, list):
        return [unflatten_state(v, tensors) for v in meta]
    return meta


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, step: int, state: Mapping[str, Any], *, keep: int = 3) -> Path:
    """Write `state` as DIR/ckpt-<step>.safetensors atomically (temp, fsync, rename, fsync dir).

    A crash at any moment leaves either the previous checkpoints or the new complete one; a
    write that fails (CheckpointWriteError, e.g. a full disk) removes its temp file.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta = flatten_state("state", state, tensors)
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "step": str(step),
        "meta": json.dumps(meta, sort_keys=True),
        "sha256": _digest(tensors),
    }
    payload = st_save(tensors, metadata=header)
    final = directory / f"ckpt-{step:012d}.safetensors"
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        kept = list_checkpoints(directory)
        newest = f"the newest complete one ({kept[-1].name}) is intact" if kept else "none yet"
        raise CheckpointWriteError(
            exc.errno,
            f"cannot write checkpoint {final.name} in {directory}: {exc.strerror or exc}; "
            f"nothing half-written was left, {newest}; {disk_hint(exc)}",
        ) from exc
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint_file(path: Path) -> tuple[int, Any]:
    """(step, state) from one checkpoint file; CheckpointError if it is partial or corrupt."""
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])["__metadata__"]
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    if header.get("format") != FORMAT or header.get("version") != str(VERSION):
        raise CheckpointError(f"{path}: not an {FORMAT} v{VERSION} file")
    if _digest(tensors) != header.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch (corrupt data)")
    return int(header["step"]), unflatten_state(json.loads(header["meta"]), tensors)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint files in step order (temp files excluded)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def load_latest_checkpoint(directory: Path) -> tuple[int, Any] | None:
    """The newest checkpoint that verifies (corrupt ones are logged and skipped), or None."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint_file(path)
        except CheckpointError as exc:
            log.warning("skipping corrupt checkpoint: %s", exc)
    return None
