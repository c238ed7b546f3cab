"""The container files agree with each other and with the node: network-8.toml provisions,
every path the node writes lands on /state, and Containerfile / compose run the same command."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from hospital_node.configio import parse_overrides
from hospital_node.node.config import load_node_config
from hospital_node.provisioning.network import load_network
from hospital_node.provisioning.provision import provision

ROOT = Path(__file__).resolve().parents[2]
STATE_SETS = [
    "node.state_dir=/state",
    "node.results_store=/state/results.sqlite",
    "node.checkpoint_dir=/state/checkpoints",
]


def _instruction(text: str, keyword: str) -> list[str]:
    """The JSON array of a Containerfile instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    line = next(ln for ln in joined.splitlines() if ln.startswith(keyword + " "))
    return json.loads(line[line.index("[") :])


def _set_args(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def test_network_8_is_a_ring_on_one_host() -> None:
    network = load_network(ROOT / "deploy" / "network-8.toml")
    assert [h.name for h in network.hospitals] == [f"N{k}" for k in range(1, 9)]
    assert [h.port for h in network.hospitals] == list(range(50051, 50059))
    assert all(h.host == "127.0.0.1" and h.site_dir == "/data/site" for h in network.hospitals)
    assert all(len(network.neighbours(h.name)) == 2 for h in network.hospitals)


def test_container_paths_all_land_on_state(tmp_path: Path) -> None:
    network = load_network(ROOT / "deploy" / "network-8.toml")
    provision(network, tmp_path)
    key = tmp_path / "N3" / "N3.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    config = load_node_config(tmp_path / "N3" / "node.toml", parse_overrides(STATE_SETS))
    written = [
        config.paths.state_dir,
        config.paths.results_store,
        config.paths.checkpoint_dir,
        config.data.cache_dir,
        config.paths.status_file,
        config.paths.boot_epoch_file,
    ]
    assert all(Path("/state") in (p, *p.parents) for p in written), written
    assert config.paths.site_dir == Path("/data/site")
    assert [p.port for p in config.peers] == [50052, 50054]


def test_containerfile_and_compose_run_the_same_command() -> None:
    containerfile = (ROOT / "Containerfile").read_text()
    cmd = _instruction(containerfile, "CMD")
    health = _instruction(containerfile, "HEALTHCHECK")  # the array after its CMD
    assert cmd[:4] == ["hospital-node", "run", "--config", "/bundle/node.toml"]
    assert _set_args(cmd) == STATE_SETS
    assert health[:4] == ["hospital-node", "status", "--config", "/bundle/node.toml"]
    assert _set_args(health) == STATE_SETS

    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    command = re.search(r"  command:\n((?:    - .*\n)+)", compose)
    assert command is not None
    argv = [ln.strip()[2:] for ln in command.group(1).splitlines()]
    assert argv == cmd
    for k in range(1, 9):
        assert f"/N{k}:/data/site:ro" in compose
        assert f"/N{k}:/bundle:ro" in compose
        assert f"- n{k}-state:/state" in compose
    assert "network_mode: host" in compose


@pytest.mark.parametrize("path", ["scripts/container_3_nodes.sh"])
def test_script_is_executable_and_uses_the_same_state_paths(path: str) -> None:
    script = ROOT / path
    assert script.stat().st_mode & stat.S_IXUSR
    text = script.read_text()
    for value in STATE_SETS:
        assert f"--set {value}" in text
