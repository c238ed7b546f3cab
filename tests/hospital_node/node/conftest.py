"""Node test fixtures: tiny synthetic sites, a provisioned loopback ring, node processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_helpers import IMAGE_SIZE, SITES, TEST_SETTINGS, NodeProcess, free_ports, merge

from data_tools.synth import SynthConfig, generate_dataset
from hospital_node.data.site import DataConfig, load_site
from hospital_node.provisioning.network import parse_network
from hospital_node.provisioning.provision import dumps_toml, provision


@pytest.fixture(scope="session")
def node_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic hospitals (~40 images of 32 px each) and a warm decode cache."""
    out = tmp_path_factory.mktemp("node-data")
    synth = SynthConfig(
        sites=3, per_site=40, test_size=4, size=IMAGE_SIZE, missing_per_site=0, workers=1
    )
    generate_dataset(synth, out, progress=False)
    for site in SITES:  # decode once here; every node process then reads the cache
        load_site(out / site, DataConfig(image_size=IMAGE_SIZE, cache_dir=out / "cache"))
    return out


@pytest.fixture(scope="session")
def build_network(node_data: Path) -> Callable[..., dict[str, Path]]:
    """build(root, settings=None, per_node=None, algorithm_overrides=None) -> {name: node.toml}: a
    provisioned ring; `algorithm_overrides` replace entries of the network's [algorithm] table."""

    def build(
        root: Path,
        settings: dict[str, Any] | None = None,
        per_node: dict[str, dict[str, Any]] | None = None,
        algorithm_overrides: dict[str, Any] | None = None,
    ) -> dict[str, Path]:
        ports = free_ports(len(SITES))
        hospitals = [
            {"name": n, "host": "127.0.0.1", "listen": "127.0.0.1", "port": port,
             "site_dir": str(node_data / n)}
            for n, port in zip(SITES, ports, strict=True)
        ]  # fmt: skip
        algorithm = {"method": "ecl-pdmm", "learning_rate": 0.05, "consensus_weight": 0.5}
        algorithm |= algorithm_overrides or {}
        network = parse_network(
            {"name": "node-tests", "topology": "ring", "hospitals": hospitals,
             "algorithm": algorithm}
        )  # fmt: skip
        provision(network, root)
        base = merge(TEST_SETTINGS, settings or {})
        base = merge(
            base, {"data": {"image_size": IMAGE_SIZE, "cache_dir": str(node_data / "cache")}}
        )
        configs = {}
        for name in SITES:
            path = root / name / "node.toml"
            extra = merge(base, (per_node or {}).get(name, {}))
            path.write_text(path.read_text() + "\n" + dumps_toml(extra))
            configs[name] = path
        return configs

    return build


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """launch(name, config, *args) -> a started NodeProcess; every one is killed at teardown."""
    started: list[NodeProcess] = []

    def launch(name: str, config: Path, *args: str) -> NodeProcess:
        node = NodeProcess(name, config, tmp_path)
        started.append(node)
        return node.start(*args)

    try:
        yield launch
    finally:
        for node in started:
            node.kill()
