"""A real 3-node network on loopback for the app tests: synthetic sites, a provisioned ring,
three `hospital-node run` processes; first with metrics sharing off, then on.

Phase 1 (`[metrics] share = false`) runs until every node has a full review (local-test AUCs
with confidence intervals) and is stopped; copies of its stores are the 'off' stores. Phase 2
restarts the same nodes (they resume from their checkpoints) with `share = true` and runs
until every node knows the summaries of all three. Bounded: every wait has a timeout.
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_TESTS = Path(__file__).resolve().parents[1] / "hospital_node" / "node"
if str(NODE_TESTS) not in sys.path:
    sys.path.insert(0, str(NODE_TESTS))

from node_helpers import TEST_SETTINGS, NodeProcess, free_ports, merge  # noqa: E402

from data_tools.synth import SynthConfig, generate_dataset  # noqa: E402
from hospital_node.data.site import DataConfig, load_site  # noqa: E402
from hospital_node.provisioning.network import parse_network  # noqa: E402
from hospital_node.provisioning.provision import dumps_toml, provision  # noqa: E402

SITES = ("N1", "N2", "N3")
IMAGE_SIZE = 32
WAIT_S = 150.0
# 40 % of each site's patients in its test split: enough positives for CIs on a few findings.
SYNTH = SynthConfig(sites=3, per_site=70, test_size=4, size=IMAGE_SIZE, missing_per_site=0,
                    split_fractions=(0.5, 0.1, 0.4), workers=1)  # fmt: skip
SETTINGS: dict[str, dict[str, Any]] = merge(
    TEST_SETTINGS,
    {
        "run": {"log_every": 5},
        "evaluation": {"every": 10, "ci_every": 1, "bootstrap": 50},
        "metrics": {"interval_s": 0.5, "min_positives": 1},
    },
)


@dataclass(frozen=True)
class NodeNetworkRun:
    """The stores of one real network: with sharing off (phase 1) and on (phase 2)."""

    off: dict[str, Path]
    on: dict[str, Path]
    data: Path


def _provision(root: Path, data: Path) -> dict[str, Path]:
    ports = free_ports(len(SITES))
    hospitals = [
        {"name": n, "host": "127.0.0.1", "listen": "127.0.0.1", "port": port,
         "site_dir": str(data / n)}
        for n, port in zip(SITES, ports, strict=True)
    ]  # fmt: skip
    algorithm = {"method": "ecl-pdmm", "learning_rate": 0.05, "consensus_weight": 0.5}
    network = parse_network({"name": "app-tests", "topology": "ring", "hospitals": hospitals,
                             "algorithm": algorithm})  # fmt: skip
    provision(network, root)
    extra = merge(SETTINGS, {"data": {"image_size": IMAGE_SIZE, "cache_dir": str(data / "cache")}})
    configs = {}
    for name in SITES:
        path = root / name / "node.toml"
        path.write_text(path.read_text() + "\n" + dumps_toml(extra))
        configs[name] = path
    return configs


def _reviewed(status: dict[str, Any]) -> bool:
    latest = status.get("latest_eval") or {}
    return status.get("state") == "training" and bool(latest.get("with_ci"))


def _knows_everyone(status: dict[str, Any]) -> bool:
    known = (status.get("metrics_sharing") or {}).get("known", {})
    return _reviewed(status) and set(known) == set(SITES)


def _phase(configs: dict[str, Path], logs: Path, *, share: bool) -> None:
    nodes = [NodeProcess(n, configs[n], logs) for n in SITES]
    try:
        for node in nodes:
            node.start("--set", f"metrics.share={str(share).lower()}")
        ready = _knows_everyone if share else _reviewed
        for node in nodes:
            node.wait_for(ready, timeout=WAIT_S, what="sharing" if share else "a full review")
        codes = [node.terminate() for node in nodes]
        if codes != [0, 0, 0]:
            raise RuntimeError(f"nodes exited with {codes}: {[n.log_tail() for n in nodes]}")
    finally:
        for node in nodes:
            node.kill()


def _copy(store: Path, target: Path) -> Path:
    source = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    dest = sqlite3.connect(target)
    try:
        source.backup(dest)
    finally:
        source.close()
        dest.close()
    return target


def run_node_network(out: Path) -> NodeNetworkRun:
    """Both phases (about a minute on an idle 2-core machine, more under load)."""
    data = out / "data"
    generate_dataset(SYNTH, data, progress=False)
    for site in SITES:  # decode once here; the node processes read the cache
        load_site(data / site, DataConfig(image_size=IMAGE_SIZE, cache_dir=data / "cache"))
    configs = _provision(out / "net", data)
    stores = {n: configs[n].parent / "state" / "results.sqlite" for n in SITES}
    for phase in ("off", "on"):
        (out / f"logs-{phase}").mkdir()
    _phase(configs, out / "logs-off", share=False)
    off = {n: _copy(stores[n], out / f"{n}-share-off.sqlite") for n in SITES}
    _phase(configs, out / "logs-on", share=True)
    return NodeNetworkRun(off=off, on=stores, data=data)
