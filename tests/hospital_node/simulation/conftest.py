"""A small synthetic site tree shared by the simulation tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_tools.synth import SynthConfig, generate_dataset

# Small but learnable: easy phantoms at 32 px, five hospitals that each lack 4 findings.
SIM_DATA = SynthConfig(
    sites=5,
    per_site=70,
    test_size=160,
    size=64,
    difficulty=0.1,
    seed=3,
    missing_per_site=4,
    workers=1,
)


@pytest.fixture(scope="session")
def sim_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim-data")
    generate_dataset(SIM_DATA, out)
    return out
