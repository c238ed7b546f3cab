"""Faults campaign, state disk: a node whose state folder fills up while it trains.

The node's state folder (checkpoints, results store, status.json) is a small ext4 image mounted
with `mount -o loop` when this runs as root; otherwise the node process gets a file-size limit
(RLIMIT_FSIZE, set on the running process with prlimit), which makes writes fail with EFBIG
instead of ENOSPC. Either way: fill it, watch the node (a clear error, no half-written
checkpoint, training and swaps go on), free it, watch checkpoints resume, restart, rejoin.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.campaign_net import (
    NodeProc,
    checkpoint_check,
    stop_all,
    store_integrity,
    swapped_since_boot,
)
from hospital_node.checkpoint import list_checkpoints

FILLER = "filler.bin"


def can_loop_mount(work: Path) -> bool:
    """Whether `mount -o loop` works here (root, loop devices)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        return False
    probe = work / "probe"
    try:
        mount_image(probe, probe / "mnt", size_mb=4)
        unmount(probe / "mnt")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def mount_image(folder: Path, mount_point: Path, *, size_mb: int) -> Path:
    """A fresh ext4 image of `size_mb` MB under `folder`, loop-mounted on `mount_point`."""
    folder.mkdir(parents=True, exist_ok=True)
    mount_point.mkdir(parents=True, exist_ok=True)
    image = folder / "state.img"
    image.unlink(missing_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    return image


def unmount(mount_point: Path) -> None:
    subprocess.run(["umount", str(mount_point)], check=False)


def fill(folder: Path) -> int:
    """Write zeros into folder/filler.bin until the file system is full; bytes written."""
    written = 0
    block = b"\0" * (1 << 20)
    with open(folder / FILLER, "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(block)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                break
        for size in (65536, 4096, 512, 1):  # the last partial blocks too
            while True:
                try:
                    written += fh.write(b"\0" * size)
                except OSError:
                    break
    return written


def log_lines(node: NodeProc, *needles: str) -> list[str]:
    text = node.log_text().splitlines()
    return [line[:400] for line in text if any(n in line for n in needles)]


def newest_checkpoint(node: NodeProc) -> int | None:
    files = list_checkpoints(node.state_dir / "checkpoints")
    return int(files[-1].name[5:17]) if files else None


def received_from(others: list[NodeProc], name: str) -> int:
    """Messages the other nodes accepted from `name` this boot (is it still swapping?)."""
    total = 0
    for other in others:
        peer = ((other.status() or {}).get("peers") or {}).get(name) or {}
        total += peer.get("received_this_boot", 0)
    return total


def watch_full(victim: NodeProc, others: list[NodeProc], seconds: float) -> dict[str, Any]:
    """While the disk is full: is it alive, still swapping, what did it log, what is on disk."""
    swaps_before = received_from(others, victim.name)
    time.sleep(seconds)
    swaps_after = received_from(others, victim.name)
    checkpoints = victim.state_dir / "checkpoints"
    return {
        "alive": victim.alive(),
        "swaps_with_neighbours_while_full": swaps_after - swaps_before,
        "checkpoint_errors_logged": log_lines(victim, "checkpoint")[-3:],
        "store_errors_logged": len(log_lines(victim, "results store write skipped")),
        "error_lines": log_lines(victim, " ERROR ", "Traceback")[-5:],
        "checkpoints_while_full": checkpoint_check(checkpoints),
        "store_integrity_while_full": store_integrity(victim.state_dir / "results.sqlite"),
    }


def half_a_checkpoint(node: NodeProc) -> int:
    """A file-size limit that stops the next checkpoint but not the log or status.json."""
    files = list_checkpoints(node.state_dir / "checkpoints")
    return files[-1].stat().st_size // 2


def limit_file_size(pid: int, limit: int | None) -> None:
    """The running process's RLIMIT_FSIZE soft limit (None: back to the hard limit)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))


def disk_full_round(
    nodes: dict[str, NodeProc], victim_name: str, *, how: str, full_s: float
) -> dict[str, Any]:
    """Fill the victim's state disk for `full_s` seconds, free it, restart it; what happened."""
    victim = nodes[victim_name]
    others = [n for n in nodes.values() if n is not victim]
    before = newest_checkpoint(victim)
    if how == "loop":
        filled = fill(victim.state_dir)
    else:
        filled = 0
        limit_file_size(victim.pid, half_a_checkpoint(victim))
    full = watch_full(victim, others, full_s)
    if how == "loop":
        (victim.state_dir / FILLER).unlink()
    else:
        limit_file_size(victim.pid, None)
    deadline, after = time.monotonic() + 120, before
    while time.monotonic() < deadline and victim.alive() and (after or -1) <= (before or -1):
        time.sleep(1.0)
        after = newest_checkpoint(victim)
    result = {"how": how, "filled_bytes": filled, "checkpoint_before": before, **full,
              "checkpoint_after_freeing": after,
              "checkpoints_resumed": after is not None and after > (before or -1)}  # fmt: skip
    code = victim.terminate()
    if how == "loop":
        result["full_at_start"] = start_on_full_disk(victim)
    victim.start()
    status = victim.wait_for(swapped_since_boot, timeout=180)
    result.update(exit_code=code, restarted=status is not None,
                  resumed_from_step=(status or {}).get("resumed_from_step"))  # fmt: skip
    return result


def start_on_full_disk(victim: NodeProc) -> dict[str, Any]:
    """Start the stopped node on a full disk: it must refuse with a clear error and exit."""
    fill(victim.state_dir)
    try:
        victim.start()
        try:
            code = victim.proc.wait(120)
        except subprocess.TimeoutExpired:
            code = None
        return {"exit_code": code, "error_lines": log_lines(victim, " ERROR ", "Traceback")[-3:]}
    finally:
        victim.kill()
        (victim.state_dir / FILLER).unlink()


def run_disk_full(
    configs: dict[str, Path],
    work: Path,
    *,
    how: str = "auto",
    full_s: float = 20.0,
    image_mb: int = 32,
) -> dict[str, Any]:
    """A 3-node network whose first node keeps its state on a small file system (`how`:
    'loop', 'rlimit_fsize' or 'auto': loop where `mount -o loop` works)."""
    names = sorted(configs)
    victim = names[0]
    state = configs[victim].parent / "state"
    if how == "auto":
        how = "loop" if can_loop_mount(work) else "rlimit_fsize"
    if how == "loop":
        mount_image(work / "disk", state, size_mb=image_mb)
    nodes = {n: NodeProc(n, configs[n], work / "logs") for n in names}
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            if node.wait_for(swapped_since_boot, timeout=300) is None:
                raise RuntimeError(f"{node.name} did not start:\n{node.log_text()[-3000:]}")
        time.sleep(5.0)  # a checkpoint or two before the disk fills
        result = disk_full_round(nodes, victim, how=how, full_s=full_s)
    finally:
        codes = stop_all(nodes.values())
        final = {"exit_codes": codes, "store": store_integrity(state / "results.sqlite"),
                 "checkpoints": checkpoint_check(state / "checkpoints")}  # fmt: skip
        if how == "loop":
            unmount(state)
    return {**result, "final": final}
