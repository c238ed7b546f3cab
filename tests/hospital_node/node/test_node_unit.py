"""node.toml parsing and the SwapHandler, in process and without a network (milliseconds)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from consensus import ConsensusConfig, make_algorithm
from consensus.transport.grpc_transport import NodeNotReady
from consensus.wire import MessageRejected
from hospital_node.node.config import NodeConfigError, load_node_config
from hospital_node.node.handler import NodeHandler
from hospital_node.node.state import next_boot_epoch
from hospital_node.provisioning.provision import dumps_toml

NODE_TOML = {
    "node": {"name": "B", "network": "t", "site_dir": "../data/B"},
    "transport": {"listen_host": "127.0.0.1", "listen_port": 50999, "advertised_host": "b"},
    "tls": {"ca_cert": "ca.crt", "cert": "B.crt", "key": "B.key"},
    "peers": [{"name": "A", "host": "a", "port": 1}, {"name": "C", "host": "c", "port": 2}],
    "algorithm": {"method": "ecl-pdmm", "learning_rate": 0.05},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bundle" / "node.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(dumps_toml(data))
    return path


def test_provisioned_fields_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_node_config(write(tmp_path, NODE_TOML), {"exchange": {"join": "scratch"}})
    bundle = tmp_path / "bundle"
    assert config.paths.site_dir == (tmp_path / "data" / "B").resolve()
    assert config.paths.status_file == bundle / "state" / "status.json"
    assert config.data.cache_dir == bundle / "state" / "cache"
    assert config.listen.local_address == "127.0.0.1:50999"
    assert [p.address for p in config.peers] == ["a:1", "c:2"]
    assert config.exchange.join == "scratch" and config.exchange.initiate == "lower"
    assert config.exchange.idle_timeout_s == 5.0 and config.exchange.call_timeout_s == 0.0
    assert not config.initiates_with("A") and config.initiates_with("C")
    assert config.edge_weights() == {"A": 0.5, "C": 0.5}


def test_topology_gives_symmetric_edge_weights(tmp_path: Path) -> None:
    edges = [["A", "B"], ["B", "C"], ["C", "D"], ["C", "E"]]  # C has degree 3
    config = load_node_config(write(tmp_path, NODE_TOML | {"topology": {"edges": edges}}))
    assert config.edge_weights() == {"A": 0.5, "C": pytest.approx(1 / 3)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": {"x": 1}}, "unknown tables"),
        ({"training": {"batch_size": 0}}, "batch_size >= 1"),
        ({"exchange": {"join": "maybe"}}, "join='maybe'"),
        ({"exchange": {"idle_timeout_s": 0}}, "idle_timeout_s must be > 0"),
        ({"exchange": {"call_timeout_s": -1}}, "call_timeout_s must be >= 0"),
        ({"algorithm": {"method": "ecl-pdmm", "rho": 1}}, "unknown field"),
        ({"topology": {"edges": [["A", "B"]]}}, "re-provision"),
        ({"peers": [{"name": "B", "host": "b", "port": 1}]}, "exclude the node itself"),
    ],
)
def test_bad_node_toml_is_refused_with_the_entry(tmp_path: Path, change: dict, message: str):
    with pytest.raises(NodeConfigError, match=message):
        load_node_config(write(tmp_path, NODE_TOML | change))


def test_boot_epoch_increases_and_is_durable(tmp_path: Path) -> None:
    path = tmp_path / "boot_epoch.json"
    assert [next_boot_epoch(path) for _ in range(3)] == [1, 2, 3]
    assert next_boot_epoch(path, floor=10) == 11 and next_boot_epoch(path) == 12


def _pair() -> tuple[NodeHandler, NodeHandler, dict, dict]:
    config = ConsensusConfig(method="ecl-pdmm", learning_rate=0.1)
    handlers, algorithms = [], []
    for me, peer in (("A", "B"), ("B", "A")):
        params = {"w": torch.zeros(3, requires_grad=False), "b": torch.ones(2)}
        algorithm = make_algorithm(config, node=me, neighbours=[peer], params=params)
        handler = NodeHandler(name=me, peers=[peer], params=params,
                              swap_schema=algorithm.wire_schema(), lock=threading.Lock(),
                              boot_epoch=1)  # fmt: skip
        handlers.append(handler)
        algorithms.append(algorithm)
    return handlers[0], handlers[1], algorithms[0], algorithms[1]


def test_handler_refuses_before_ready_and_validates_before_touching_state() -> None:
    a, b, alg_a, alg_b = _pair()
    with pytest.raises(NodeNotReady):
        a.outgoing_for("B")
    a.attach(alg_a)
    b.attach(alg_b)
    message = a.outgoing_for("B")
    b.on_received("A", message)
    with pytest.raises(MessageRejected, match="replayed"):
        b.on_received("A", message)
    with pytest.raises(MessageRejected, match="unknown_sender"):
        b.on_received("C", a.outgoing_for("B"))
    snapshot = b.snapshot()
    assert snapshot["pending"] == 1 and snapshot["gate"]["accepted"] == 1
    assert snapshot["peers"]["A"]["rejected"] == {"replayed": 1}
    assert b.apply_pending() == 1 and b.snapshot()["peers"]["A"]["applied"] == 1


def test_model_message_round_trip_and_state_dict() -> None:
    a, b, alg_a, _ = _pair()
    params = b.accept_model("A", a.model_for("B"))
    assert set(params) == {"w", "b"} and torch.equal(params["b"], torch.ones(2))
    a.attach(alg_a)
    a.on_sent("B", len(a.outgoing_for("B")))
    state = a.state_dict()
    restored, *_ = _pair()
    restored.load_state_dict(state)
    assert restored.counters()["B"].messages_sent == 1
