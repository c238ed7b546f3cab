"""A state disk that fills up: failed checkpoint and JSON writes leave nothing half-written, say
what to do, and do not stop the node; a privacy ledger that cannot be written sends nothing."""

from __future__ import annotations

import errno
import os
import threading

import pytest
import torch

from consensus import make_algorithm
from consensus.config import ConsensusConfig
from hospital_node.checkpoint import (
    CheckpointWriteError,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from hospital_node.diskerrors import disk_hint
from hospital_node.node.checkpointing import NodeCheckpoints
from hospital_node.node.handler import NodeHandler, NodeNotReady
from hospital_node.node.state import read_json, write_json


def no_space(*_args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def state(value: float) -> dict[str, object]:
    return {"model": {"w": torch.full((4,), value)}, "step": value}


def test_a_checkpoint_on_a_full_disk_leaves_nothing_half_written(tmp_path, monkeypatch) -> None:
    save_checkpoint(tmp_path, 1, state(1.0))
    monkeypatch.setattr(os, "fsync", no_space)  # delayed allocation: ENOSPC surfaces at fsync

    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(tmp_path, 2, state(2.0))

    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "nothing half-written was left" in message and "ckpt-000000000001" in message
    assert "the disk is full: free space on it" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000001.safetensors"]
    monkeypatch.undo()
    step, loaded = load_latest_checkpoint(tmp_path)
    assert step == 1 and torch.equal(loaded["model"]["w"], torch.full((4,), 1.0))


def test_node_checkpoints_report_a_failure_streak_and_its_end(
    tmp_path, monkeypatch, caplog
) -> None:
    writer = NodeCheckpoints(name="N1", directory=tmp_path, keep=3)
    assert writer.save(5, state(5.0)) and writer.failing is None
    monkeypatch.setattr(os, "fsync", no_space)

    first, second = writer.save(10, state(10.0)), writer.save(15, state(15.0))
    failing = dict(writer.failing)
    monkeypatch.undo()
    recovered = writer.save(20, state(20.0))

    assert not first and not second and recovered
    assert failing["since_step"] == 10 and failing["failures"] == 2
    assert "No space left on device" in failing["error"]
    assert writer.failing is None and writer.last["step"] == 20
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-000000000005.safetensors",
        "ckpt-000000000020.safetensors",
    ]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Training and swaps go on" in errors[0].getMessage()
    assert any("written again" in r.getMessage() for r in caplog.records)


def test_write_json_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "status.json"
    write_json(path, {"step": 1})
    monkeypatch.setattr(os, "fsync", no_space)

    with pytest.raises(OSError, match="cannot write .*status.json.*the disk is full"):
        write_json(path, {"step": 2})

    monkeypatch.undo()
    assert read_json(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize(
    ("code", "hint"),
    [(errno.ENOSPC, "disk is full"), (errno.EDQUOT, "disk is full"), (errno.EFBIG, "ulimit -f"),
     (errno.EROFS, "read-only"), (errno.EACCES, "permissions")],
)  # fmt: skip
def test_disk_hint_says_what_to_do(code: int, hint: str) -> None:
    assert hint in disk_hint(OSError(code, os.strerror(code)))


def test_a_ledger_that_cannot_be_written_sends_nothing() -> None:
    params = {"w": torch.zeros(3), "b": torch.ones(2)}
    config = ConsensusConfig(method="ecl-pdmm", learning_rate=0.1)
    algorithm = make_algorithm(config, node="A", neighbours=["B"], params=params)
    handler = NodeHandler(name="A", peers=["B"], params=params, lock=threading.Lock(),
                          swap_schema=algorithm.wire_schema(), boot_epoch=1,
                          before_send=lambda: no_space())  # fmt: skip
    handler.attach(algorithm)

    with pytest.raises(NodeNotReady, match="cannot record its privacy spending"):
        handler.outgoing_for("B")

    assert handler.counters()["B"].messages_sent == 0
