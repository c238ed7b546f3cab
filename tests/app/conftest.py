"""Fixtures for the app tests: a results store from a tiny real simulation run, and bad stores."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hospital_node.store_read import StoreReader

MAIN_SCRIPT = Path(__file__).resolve().parents[2] / "app" / "main.py"
# Reuse an existing output folder of the command below (results.sqlite + data/) to skip the
# simulation while iterating on the app; unset, the session runs the simulation once.
REUSE_ENV = "ECL_APP_TEST_SIM_OUT"
SIM_ARGS = [
    "--steps", "6", "--quiet", "--methods", "centralized,local,ecl-pdmm",
    # 4 sites: with 3, the phantom generator cannot spread absent findings (each finding
    # must stay at >= 3 sites), and 3 absent findings per site give 'never seen' cells.
    "--set", "data.synth_sites=4", "--set", "data.synth_missing_per_site=3",
    "--set", "data.synth_per_site=24", "--set", "data.synth_test_size=48",
    "--set", "data.synth_size=64", "--set", "data.image_size=32",
    "--set", "training.eval_every=3", "--set", "training.checkpoint_every=3",
    "--set", "training.bootstrap=20", "--set", "network.topology=full",
]  # fmt: skip


@dataclass(frozen=True)
class SimRun:
    """What the tiny simulation left: its store, its DICOM tree and its run id."""

    store: Path
    dicom_dir: Path
    run_id: str


def _simulate(out: Path) -> None:
    from hospital_node.sim_cli import main

    args = ["--out", str(out), *SIM_ARGS, "--set", f"data.cache_dir={out / 'cache'}"]
    code = main(args)
    if code != 0:
        pytest.fail(f"the fixture simulation (ecl-sim {' '.join(args)}) exited with {code}")


@pytest.fixture(scope="session")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    """A finished 4-hospital run of centralized, local and ECL-PDMM (about 15 s, once)."""
    reuse = os.environ.get(REUSE_ENV)
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("sim")
    if not reuse:
        _simulate(out)
    store = out / "results.sqlite"
    with StoreReader.open_readonly(store) as reader:
        run_id = str(reader.list_runs()["run_id"].iloc[0])
    return SimRun(store=store, dicom_dir=out / "data", run_id=run_id)


@pytest.fixture()
def store_copy(sim_run: SimRun, tmp_path: Path) -> Path:
    """A private copy of the fixture store (safe to change), made with SQLite's backup API."""
    target = tmp_path / "copy.sqlite"
    source = sqlite3.connect(f"file:{sim_run.store}?mode=ro", uri=True)
    dest = sqlite3.connect(target)
    try:
        source.backup(dest)
    finally:
        source.close()
        dest.close()
    return target


AppFactory = Callable[..., AppTest]


@pytest.fixture()
def make_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppFactory]:
    """Build an AppTest of app/main.py as if started by `ecl-app` with the given arguments."""

    def factory(*args: str | Path) -> AppTest:
        monkeypatch.setattr(sys, "argv", [str(MAIN_SCRIPT), *(str(a) for a in args)])
        return AppTest.from_file(str(MAIN_SCRIPT), default_timeout=60)

    yield factory


def copy_tree(source: Path, target: Path) -> Path:
    """Copy a folder (used to place DICOM files where a test needs them)."""
    shutil.copytree(source, target)
    return target
