"""`ecl-sim --backend ray` on a local Ray instance: the in-process engine's report, same seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sim_helpers import sim_args

from data_tools.synth import SynthConfig, generate_dataset
from hospital_node.simulation.cli import main

pytest.importorskip(
    "ray", reason="Ray is an optional extra: pip install '.[ray]' (make test installs it)"
)
pytestmark = pytest.mark.slow

THREE_SITES = SynthConfig(
    sites=3, per_site=24, test_size=48, size=32, difficulty=0.1, seed=4, missing_per_site=0,
    workers=1,
)  # fmt: skip


def test_ray_backend_gives_the_in_process_report(tmp_path: Path) -> None:
    # Prepare: 3 hospitals on a ring, a swap on every edge about once a step
    data = tmp_path / "data"
    generate_dataset(THREE_SITES, data)
    common = (
        "--methods", "ecl-pdmm", "--steps", "6", "--seed", "7",
        "--set", "evaluation.every=3", "--set", "training.checkpoint_every=3",
        "--set", "evaluation.images=48", "--set", "training.threads=1",
        # the in-process engine stepping one model at a time: what each actor computes
        "--set", "batched=false",
    )  # fmt: skip
    reports = {}

    # Execute
    for backend in ("inprocess", "ray"):
        path = tmp_path / f"{backend}.json"
        args = sim_args(data, tmp_path / backend, *common, "--report-json", str(path),
                        "--backend", backend)  # fmt: skip
        assert main(args) == 0
        reports[backend] = json.loads(path.read_text())

    # Assert: the same numbers for every method, hospital and finding
    assert reports["ray"]["methods"] == reports["inprocess"]["methods"]
    assert reports["ray"]["config"]["backend"] == "ray"
