"""Three hospital nodes in three OS processes on loopback: they swap, agree, and fill stores."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
from node_helpers import NODE_COMMAND, SITES, swapped_with_all

from hospital_node.checkpoint import load_latest_checkpoint
from hospital_node.evaluation.metrics import consensus_residual
from hospital_node.training.model import ModelConfig, build_model

# Different seeds give three different initial models, so agreement has to come from swaps.
SEEDS = {
    "N1": {"training": {"seed": 1}},
    "N2": {"training": {"seed": 2}},
    "N3": {"training": {"seed": 3}},
}
SCRATCH = {"exchange": {"join": "scratch"}}


def initial_models() -> list[dict[str, torch.Tensor]]:
    models = []
    for seed in (1, 2, 3):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            models.append(dict(build_model(ModelConfig()).named_parameters()))
    return models


def checkpointed_models(
    configs: dict[str, Path],
) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """The model of each node's newest checkpoint, and the checkpoint steps."""
    models, steps = [], []
    for name in SITES:
        found = load_latest_checkpoint(configs[name].parent / "state" / "checkpoints")
        assert found is not None, f"{name} has no checkpoint yet"
        step, state = found
        models.append(state["model"])
        steps.append(step)
    return models, steps


def store_counts(path: Path, run_id: str) -> dict[str, object]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            "run_status": con.execute(
                "SELECT status FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()[0],
            "metrics": con.execute(
                "SELECT COUNT(*) FROM metrics WHERE run_id = ?", (run_id,)
            ).fetchone()[0],
            "auc": con.execute("SELECT COUNT(*) FROM auc WHERE run_id = ?", (run_id,)).fetchone()[
                0
            ],
            "node_state": con.execute(
                "SELECT state FROM node_status WHERE run_id = ? AND site = ?", (run_id, run_id)
            ).fetchone()[0],
            "neighbour_states": {
                site: state
                for site, state in con.execute(
                    "SELECT site, state FROM node_status WHERE run_id = ? AND site != ?",
                    (run_id, run_id),
                )
            },
            "shared": con.execute(
                "SELECT COUNT(*) FROM shared_metrics WHERE run_id = ?", (run_id,)
            ).fetchone()[0],
            "exchanges": {
                (src, dst): messages
                for src, dst, messages in con.execute(
                    "SELECT src, dst, MAX(messages) FROM exchanges WHERE run_id = ? "
                    "GROUP BY src, dst",
                    (run_id,),
                )
            },
        }
    finally:
        con.close()


# ECL-ISVR on real nodes: its weight comes from the local steps between two swaps on an edge.
ISVR = {"method": "ecl-isvr-admm", "isvr_local_steps": 4.0}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("algorithm", [None, ISVR], ids=["ecl-pdmm", "ecl-isvr-admm"])
def test_three_nodes_swap_agree_and_fill_their_stores(
    tmp_path, build_network, launcher, algorithm
) -> None:
    # Prepare: a provisioned ring of three, each node starting from its own random model.
    per_node = {n: {**SEEDS[n], **SCRATCH} for n in SITES}
    configs = build_network(tmp_path / "net", per_node=per_node, algorithm_overrides=algorithm)
    start_residual = consensus_residual(initial_models())

    # Execute: three OS processes.
    nodes = {name: launcher(name, configs[name]) for name in SITES}
    swapped = swapped_with_all(3)
    for node in nodes.values():  # swaps can come before the first checkpoint on a busy host
        node.wait_for(
            lambda s: swapped(s) and s.get("last_checkpoint") is not None,
            timeout=120, what="3 swaps with each neighbour and a checkpoint",
        )  # fmt: skip
    early_models, early_steps = checkpointed_models(configs)
    early = consensus_residual(early_models)
    target = max(early_steps) + 60
    for node in nodes.values():
        node.wait_for(lambda s: s["step"] >= target, timeout=90, what=f"step {target}")
    late_models, _ = checkpointed_models(configs)
    late = consensus_residual(late_models)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    shown = subprocess.run(
        [*NODE_COMMAND, "status", "--config", str(configs["N2"]), "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    codes = {name: node.terminate() for name, node in nodes.items()}

    # Assert: swaps with every neighbour, models pulled together, clean stop, stores filled.
    assert late < 0.5 * start_residual, (start_residual, early, late)
    assert late < early, (early, late)
    assert codes == dict.fromkeys(SITES, 0)
    report = json.loads(shown.stdout)
    assert shown.returncode == 0, shown.stderr
    assert report["health"] == "SERVING"
    assert set(report["peers"]) == {"N1", "N3"}
    assert all(p["applied"] > 0 and p["last_swap_at"] for p in report["peers"].values())
    for name in SITES:
        counts = store_counts(configs[name].parent / "state" / "results.sqlite", name)
        peers = [p for p in SITES if p != name]
        assert counts["run_status"] == "interrupted" and counts["node_state"] == "stopped"
        assert counts["metrics"] > 0 and counts["auc"] > 0
        assert counts["shared"] == 0  # [metrics] share is off by default: nothing published
        assert counts["neighbour_states"] == dict.fromkeys(peers, "heard")
        for peer in peers:
            assert counts["exchanges"][(name, peer)] > 0 and counts["exchanges"][(peer, name)] > 0
        final = json.loads((configs[name].parent / "state" / "status.json").read_text())
        assert final["state"] == "stopped"
        assert final["last_checkpoint"]["step"] == final["step"]  # SIGTERM wrote a checkpoint


def test_status_without_a_running_node(tmp_path, build_network) -> None:
    configs = build_network(tmp_path / "net")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    shown = subprocess.run(
        [*NODE_COMMAND, "status", "--config", str(configs["N1"]), "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    report = json.loads(shown.stdout)
    assert shown.returncode == 3
    assert report["health"] == "not running" and report["state"] == "never started"
    assert time.monotonic() - started < 60
