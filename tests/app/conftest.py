"""Fixtures for the app tests: a results store from a tiny real simulation run, and bad stores."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hospital_node.store.reader import StoreReader

MAIN_SCRIPT = Path(__file__).resolve().parents[2] / "app" / "main.py"
# Reuse an existing output folder of the command below (results.sqlite + data/) to skip the
# simulation while iterating on the app; unset, the session runs the simulation once.
REUSE_ENV = "ECL_APP_TEST_SIM_OUT"
# 4 hospitals: with 3, the generator cannot spread the absent findings (each finding must stay
# at >= 3 sites); 3 absent findings per hospital give 'never seen at this site' cells.
SYNTH = {"sites": 4, "per_site": 24, "test_size": 48, "size": 64, "missing_per_site": 3}
SIM_ARGS = [
    "--steps", "6", "--quiet", "--set", "data.image_size=32", "--set", "evaluation.every=3",
    "--set", "training.checkpoint_every=3", "--set", "evaluation.bootstrap=20",
    "--set", "network.topology=full",
]  # fmt: skip
# The older of the two runs: ECL with differential privacy on the exchanges, a small budget.
DP_ARGS = ["--methods", "ecl-pdmm", "--dp", "exchange", "--noise-multiplier", "4", "--clip", "1"]
DP_ARGS += ["--epsilon-budget", "3"]
# The newest run (the app's default): the method and both references, no privacy mode.
MAIN_ARGS = ["--methods", "centralized,local,ecl-pdmm"]


@dataclass(frozen=True)
class SimRun:
    """What the tiny simulation left: its store, its DICOM tree and its two runs."""

    store: Path
    dicom_dir: Path
    run_id: str  # the newest run: centralized, local, ecl-pdmm; no privacy mode
    dp_run_id: str  # the older run: ecl-pdmm with differential privacy


def _simulate(out: Path) -> None:
    """Phantom DICOM set (written in this process: worker processes would each spend seconds
    importing torch on a busy machine), then two simulation runs on it into one store."""
    from data_tools.synth import SynthConfig, generate_dataset
    from hospital_node.simulation.cli import main

    generate_dataset(SynthConfig(**SYNTH, workers=1), out / "data")
    for extra in (DP_ARGS, MAIN_ARGS):  # run ids are start times: the main run is the newest
        args = ["--out", str(out), "--data", str(out / "data"), *SIM_ARGS, *extra]
        code = main([*args, "--set", f"data.cache_dir={out / 'cache'}"])
        if code != 0:
            pytest.fail(f"the fixture simulation (ecl-sim {' '.join(args)}) exited with {code}")


@pytest.fixture(scope="session")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    """Two finished 4-hospital runs in one store (about 20-30 s, once per session)."""
    reuse = os.environ.get(REUSE_ENV)
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("sim")
    if not reuse:
        _simulate(out)
    store = out / "results.sqlite"
    with StoreReader.open_readonly(store) as reader:
        runs = [str(r) for r in reader.list_runs()["run_id"]]
        with_dp = [r for r in runs if reader.run_info(r).privacy is not None]
    assert len(runs) == 2 and len(with_dp) == 1, f"unexpected fixture runs {runs}"
    return SimRun(store=store, dicom_dir=out / "data", run_id=runs[0], dp_run_id=with_dp[0])


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


# Reuse the folder of an earlier node-network run (see node_network.py) while iterating.
NODE_REUSE_ENV = "ECL_APP_TEST_NODES_OUT"


@pytest.fixture(scope="session")
def node_network(tmp_path_factory: pytest.TempPathFactory):
    """A real 3-node loopback network, run with metrics sharing off, then on (node_network.py)."""
    from node_network import SITES, NodeNetworkRun, run_node_network

    reuse = os.environ.get(NODE_REUSE_ENV)
    if reuse:
        out = Path(reuse)
        return NodeNetworkRun(
            off={n: out / f"{n}-share-off.sqlite" for n in SITES},
            on={n: out / "net" / n / "state" / "results.sqlite" for n in SITES},
            data=out / "data",
        )
    return run_node_network(tmp_path_factory.mktemp("node-network"))


AppFactory = Callable[..., AppTest]


@pytest.fixture()
def make_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppFactory]:
    """Build an AppTest of app/main.py as if started by `ecl-app` with the given arguments."""

    def factory(*args: str | Path) -> AppTest:
        monkeypatch.setattr(sys, "argv", [str(MAIN_SCRIPT), *(str(a) for a in args)])
        return AppTest.from_file(str(MAIN_SCRIPT), default_timeout=60)

    yield factory
