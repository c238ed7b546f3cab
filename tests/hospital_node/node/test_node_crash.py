"""Checkpoints resume exactly, survive corruption, and a node killed with -9 comes back."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch
from node_helpers import SITES, swapped_with_all

from consensus import make_algorithm
from consensus.wire import Message, MessageHeader, encode_message
from hospital_node.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint_file,
    load_latest_checkpoint,
)
from hospital_node.node.config import NodeConfig, load_node_config
from hospital_node.node.runtime import HospitalNode

IN_PROCESS = {
    "exchange": {"join": "scratch"},
    "training": {"checkpoint_every": 4},
    "evaluation": {"every": 0},
    "run": {"max_steps_per_second": 0.0},
}


def node_config(path: Path, state: Path) -> NodeConfig:
    """N1's configuration with its own state folder (two independent copies of one node)."""
    folders = {"state_dir": str(state), "checkpoint_dir": str(state / "checkpoints"),
               "results_store": str(state / "results.sqlite")}  # fmt: skip
    return load_node_config(path, {"node": folders})


def message_from_n2(node: HospitalNode) -> bytes:
    """A valid N2 -> N1 message with non-zero duals, so the restored state is not trivial."""
    params = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(7))
              for n, p in node.params.items()}  # fmt: skip
    sender = make_algorithm(node.config.consensus, node="N2", neighbours=["N1", "N3"],
                            params=params)  # fmt: skip
    header = MessageHeader(sender="N2", receiver="N1", method=sender.method,
                           schema_hash=sender.wire_schema().digest, sequence=1)  # fmt: skip
    return encode_message(Message(header=header, tensors=sender.outgoing("N1")))


def run_node(config: NodeConfig, max_steps: int, *, inject: bool) -> HospitalNode:
    node = HospitalNode(config=config)
    node.initialize()
    try:
        if inject:
            node.handler.on_received("N2", message_from_n2(node))
        node.run(max_steps=max_steps)
    finally:
        node.shutdown(status="finished")
    return node


def test_resume_from_checkpoint_is_exact(tmp_path, build_network) -> None:
    configs = build_network(tmp_path / "net", settings=IN_PROCESS)
    straight_config = node_config(configs["N1"], tmp_path / "straight")
    resumed_config = node_config(configs["N1"], tmp_path / "resumed")

    straight = run_node(straight_config, 8, inject=True)
    run_node(resumed_config, 4, inject=True)
    resumed = run_node(resumed_config, 8, inject=False)

    assert resumed.resumed_from_step == 4 and resumed.step == straight.step == 8
    a, b = straight.get_weights(), resumed.get_weights()
    assert all(torch.equal(a[k], b[k]) for k in a)
    duals_a = straight.algorithm.state_dict()["tensors"]
    duals_b = resumed.algorithm.state_dict()["tensors"]
    assert any(t.abs().sum() > 0 for t in duals_a.values())  # the injected message mattered
    assert all(torch.equal(duals_a[k], duals_b[k]) for k in duals_a)
    assert resumed.boot_epoch == 2  # a new boot epoch at every start


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, build_network) -> None:
    configs = build_network(tmp_path / "net", settings=IN_PROCESS)
    config = node_config(configs["N1"], tmp_path / "state")
    run_node(config, 8, inject=False)
    newest = list_checkpoints(config.paths.checkpoint_dir)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    leftover = config.paths.checkpoint_dir / ".ckpt-000000000012.safetensors.tmp-999999"
    leftover.write_bytes(b"partial")  # what a kill during save_checkpoint leaves

    node = HospitalNode(config=config)
    try:
        node.initialize()
        assert node.resumed_from_step == 4
        assert not leftover.exists()
    finally:
        node.shutdown(status="finished")
    with pytest.raises(CheckpointError):  # still torn: it was skipped, never trusted
        load_checkpoint_file(newest)


def test_lost_boot_epoch_file_continues_above_the_checkpoint(tmp_path, build_network) -> None:
    configs = build_network(tmp_path / "net", settings=IN_PROCESS)
    config = node_config(configs["N1"], tmp_path / "state")
    for _ in range(3):
        first = run_node(config, 4, inject=False)  # boots 1, 2, 3; checkpoints hold epoch 3
    config.paths.boot_epoch_file.unlink()

    again = run_node(config, 4, inject=False)

    assert first.boot_epoch == 3 and again.boot_epoch == 4


def corrupt_checkpoints(directory: Path) -> int:
    bad = 0
    for path in list_checkpoints(directory):
        try:
            load_checkpoint_file(path)
        except CheckpointError:
            bad += 1
    return bad


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill9_restart_resumes_and_rejoins(tmp_path, build_network, launcher) -> None:
    rng = random.Random(20240131)
    configs = build_network(tmp_path / "net")
    nodes = {name: launcher(name, configs[name]) for name in SITES}
    for node in nodes.values():
        node.wait_for(swapped_with_all(1), timeout=120, what="first swaps")

    for _round in range(2):
        victim = nodes[rng.choice(SITES)]
        others = [n for n in nodes.values() if n is not victim]
        time.sleep(rng.uniform(0.5, 3.0))  # a random moment in the middle of training
        found = load_latest_checkpoint(victim.state_dir / "checkpoints")
        assert found is not None
        victim.kill()
        outage_start = {n.name: n.status()["step"] for n in others}
        victim.start()
        status = victim.wait_for(lambda s: s["state"] == "training", timeout=90, what="restart")
        assert status["resumed_from_step"] is not None and status["resumed_from_step"] >= found[0]
        for other in others:
            assert other.status()["step"] > outage_start[other.name], other.name
        victim.wait_for(swapped_with_all(1), timeout=60, what="swaps after the restart")

    codes = {name: node.terminate() for name, node in nodes.items()}
    assert codes == dict.fromkeys(SITES, 0)
    assert sum(corrupt_checkpoints(configs[n].parent / "state" / "checkpoints") for n in SITES) == 0
