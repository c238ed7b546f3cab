"""Differential privacy on real nodes: loopback gRPC with real certificates, in-process nodes."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from node_helpers import SITES
from torch import nn

from consensus import ConsensusConfig, make_algorithm
from consensus.accounting import ExchangeAccountant
from consensus.privacy import gaussian_epsilon
from consensus.privacy_config import PrivacyConfig
from consensus.private_exchange import ExchangePrivacy
from consensus.transport.grpc_transport import (
    PeerClient,
    RejectedByPeer,
    RetryPolicy,
    TransportConfig,
    load_tls,
)
from consensus.wire import decode_message
from hospital_node import cli
from hospital_node.checkpoint import list_checkpoints, load_latest_checkpoint
from hospital_node.configio import deep_merge
from hospital_node.node import runtime as node_module
from hospital_node.node.config import (
    NodeConfig,
    NodeConfigError,
    load_node_config,
)
from hospital_node.node.handler import NodeHandler
from hospital_node.node.runtime import HospitalNode, NodeError
from hospital_node.node.status import collect_status, format_status
from hospital_node.provisioning.provision import dumps_toml

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]

SETTINGS = {
    "exchange": {"join": "scratch", "mean_interval_s": 0.3},
    "training": {"checkpoint_every": 5},
    "evaluation": {"every": 0},
    "run": {"max_steps_per_second": 5.0},
}
SIGMA = 5.0
# Two releases fit (epsilon 2.48 at delta 1e-5), a third would make 3.12: N1 stops sending.
TINY_BUDGET = 2.6
EXCHANGE = {"mode": "exchange", "noise_multiplier": SIGMA, "clip_norm": 0.05}


def config_for(path: Path, privacy: dict[str, Any]) -> NodeConfig:
    return load_node_config(path, {"privacy": privacy})


def wait_until(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s")
        time.sleep(0.1)


@contextmanager
def running(configs: dict[str, NodeConfig]) -> Iterator[dict[str, HospitalNode]]:
    """Initialize every node, train each in its own thread; stop and shut them all down."""
    nodes = {name: HospitalNode(config=config) for name, config in configs.items()}
    threads = []
    try:
        for node in nodes.values():
            node.initialize()
        for node in nodes.values():
            threads.append(threading.Thread(target=node.run, daemon=True))
            threads[-1].start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop_event.set()
        for thread in threads:
            thread.join(30)
        for node in nodes.values():
            node.shutdown(status="interrupted")


def privacy_row(config: NodeConfig) -> dict[str, Any]:
    con = sqlite3.connect(f"file:{config.paths.results_store}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        row = con.execute("SELECT * FROM privacy WHERE site = ?", (config.name,)).fetchone()
        return dict(row)
    finally:
        con.close()


def test_exhausted_node_withholds_keeps_training_and_receiving(tmp_path, build_network) -> None:
    # Prepare: a ring of three in exchange mode; N1 can afford two releases, the others more.
    paths = build_network(tmp_path / "net", settings=SETTINGS)
    configs = {name: config_for(paths[name], EXCHANGE) for name in SITES}
    configs["N1"] = config_for(paths["N1"], EXCHANGE | {"epsilon_budget": TINY_BUDGET})

    # Execute: train until N1 has withheld from both neighbours and received after that.
    with running(configs) as nodes:
        n1, peers = nodes["N1"], [nodes["N2"], nodes["N3"]]
        wait_until(lambda: n1.privacy.stopped_sending, timeout=40, what="spent budget at N1")
        spent_at = {"step": n1.step, "received": _received(n1)}
        wait_until(
            lambda: (
                all(p.handler.counters()["N1"].withheld_received >= 2 for p in peers)
                and _received(n1) > spent_at["received"] + 2
                and n1.step > spent_at["step"] + 3
            ),
            timeout=40,
            what="withheld swaps that still deliver to N1",
        )
        wait_until(lambda: _status(n1)["state"] == "stopped_sending", timeout=10, what="status")
        status = _status(n1)
        shown = format_status(collect_status(n1.config, timeout=2.0), now=time.time())
        counters = n1.handler.counters()
        peer_counters = [p.handler.counters()["N1"] for p in peers]
        epsilon = n1.privacy.exchange.epsilon()
        releases = n1.privacy.exchange.accountant.releases

    # Assert: two releases ever left N1; the peers saw withheld swaps, never a rejection.
    assert releases == 2 and sum(c.messages_received for c in peer_counters) >= 1
    assert all(c.messages_withheld >= 1 for c in counters.values())
    assert all(c.withheld_received >= 2 and c.rejected == {} for c in peer_counters)
    assert epsilon == pytest.approx(gaussian_epsilon([(SIGMA, 2)], delta=1e-5))
    assert status["state"] == "stopped_sending"
    assert status["privacy"]["stopped_sending"] and status["privacy"]["releases"] == 2
    assert "BUDGET SPENT: sends nothing" in shown
    row = privacy_row(configs["N1"])
    assert row["mode"] == "exchange" and row["exhausted"] == 1 and row["releases"] == 2
    assert row["epsilon"] == pytest.approx(epsilon) and row["budget"] == TINY_BUDGET
    assert privacy_row(configs["N2"])["exhausted"] == 0

    # The checkpoint keeps the accountant and the edge references, never the noise generator.
    _, saved = load_latest_checkpoint(configs["N1"].paths.checkpoint_dir)
    assert saved["privacy"]["mode"] == "exchange" and saved["privacy"]["accountant"]["segments"]
    assert any(k.startswith("privacy/reference/") for k in saved["algorithm"]["tensors"])
    assert not [k for k in saved["algorithm"]["tensors"] if "generator" in k]

    # Restart N1 alone from its checkpoint: the same epsilon, still withholding.
    again = HospitalNode(config=configs["N1"])
    try:
        again.initialize()
        assert again.resumed_from_step is not None
        assert again.privacy.exchange.epsilon() == pytest.approx(epsilon)
        assert again.privacy.stopped_sending and again.display_state == "stopped_sending"
        assert again.handler.outgoing_for("N2") is None  # withheld, before any swap
    finally:
        again.shutdown(status="interrupted")

    # Checkpoints gone (an operator restarts the model): the ledger still keeps the epsilon.
    for path in list_checkpoints(configs["N1"].paths.checkpoint_dir):
        path.unlink()
    fresh = HospitalNode(config=configs["N1"])
    try:
        fresh.initialize()
        assert fresh.resumed_from_step is None
        assert fresh.privacy.exchange.accountant.releases == 2
        assert fresh.privacy.exchange.epsilon() == pytest.approx(epsilon)
        assert fresh.privacy.stopped_sending
    finally:
        fresh.shutdown(status="interrupted")

    # Another mode over that record is refused, with what to do.
    off = HospitalNode(config=config_for(paths["N1"], {"mode": "off"}))
    try:
        with pytest.raises(NodeError, match="privacy mode 'exchange'.*privacy.json aside"):
            off.initialize()
    finally:
        off.shutdown(status="failed")


def _received(node: HospitalNode) -> int:
    return sum(c.messages_received for c in node.handler.counters().values())


def _status(node: HospitalNode) -> dict[str, Any]:
    try:
        return json.loads(node.config.paths.status_file.read_text())
    except (OSError, ValueError):
        return {}


def test_fetch_model_is_refused_in_exchange_mode(tmp_path, build_network) -> None:
    paths = build_network(tmp_path / "net", settings=SETTINGS)
    config = config_for(paths["N1"], EXCHANGE)
    node = HospitalNode(config=config)
    bundle = paths["N2"].parent
    tls = load_tls(ca_cert=bundle / "ca.crt", cert=bundle / "N2.crt", key=bundle / "N2.key")
    client = PeerClient(
        name="N2", peer="N1", address=config.listen.local_address, tls=tls,
        rng=random.Random(0), config=TransportConfig(method="ecl-pdmm"),
        retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip
    try:
        node.initialize()
        with pytest.raises(RejectedByPeer, match="model_withheld") as err:
            client.fetch_model()
        assert "common initial model" in err.value.detail
        assert node.handler.counters()["N2"].models_refused == 1
        assert node.server.stats()["refused.model_withheld"] == 1
    finally:
        client.close()
        node.shutdown(status="interrupted")


def test_dpsgd_node_spends_epsilon_per_step_and_stops_at_its_target(
    tmp_path, build_network
) -> None:
    # Prepare: N1 alone (its neighbours are down), DP-SGD calibrated for one epoch.
    paths = build_network(tmp_path / "net", settings=SETTINGS)
    privacy = {"mode": "dpsgd", "target_epsilon": 2.0, "planned_epochs": 1, "clip_norm": 1.0}
    config = config_for(paths["N1"], privacy)
    node = HospitalNode(config=config)
    try:
        node.initialize()
        private = node.privacy.dpsgd.privacy
        limit = node.privacy.summary()["step_limit"]

        # Execute: one step, then train until the target stops it.
        node.run(max_steps=1)
        first = private.epsilon()
        node.run(max_steps=limit + 50)
        status = node.reporter.status_snapshot()
    finally:
        node.shutdown(status="finished")

    # Assert: a noisy step per batch; epsilon grew to the target and no further.
    assert node.trainer.dpsgd is node.privacy.dpsgd  # the simulation's own mechanism
    assert (node.trainer.pos_weight == 1).all()  # label-derived weights would leak
    assert private.steps == node.step == limit >= 2
    assert 0 < first < private.epsilon() <= 2.0
    assert status["state"] == "budget_spent" and status["privacy"]["unit"] == "record"
    row = privacy_row(config)
    assert row["mode"] == "dpsgd" and row["releases"] == limit and row["exhausted"] == 1

    # A restart keeps the steps already taken: still at the target, nothing left to train.
    again = HospitalNode(config=config)
    try:
        again.initialize()
        assert again.privacy.dpsgd.privacy.epsilon() == pytest.approx(private.epsilon())
        assert again.privacy.training_done() and again.run(max_steps=limit + 5) == limit
    finally:
        again.shutdown(status="finished")


def test_dpsgd_refuses_a_batchnorm_model(tmp_path, build_network, monkeypatch) -> None:
    def batchnorm_model(_config: Any) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, 14),
        )  # fmt: skip

    monkeypatch.setattr(node_module, "initial_model", lambda config, seed: batchnorm_model(config))
    paths = build_network(tmp_path / "net", settings=SETTINGS)
    config = config_for(paths["N1"], {"mode": "dpsgd", "noise_multiplier": 1.0, "clip_norm": 1.0})
    node = HospitalNode(config=config)
    try:
        with pytest.raises(NodeError, match=r"offending layers \['1'\].*use GroupNorm"):
            node.initialize()
    finally:
        node.shutdown(status="failed")


def test_retries_and_fast_callers_get_one_release_per_step() -> None:
    """A peer that is down, or calls very often, must not drain the budget."""
    (a, algorithm), (b, _) = private_handler("A", "B"), private_handler("B", "A")
    first, retry = a.outgoing_for("B"), a.outgoing_for("B")  # the first attempt failed
    b.on_received("A", retry)  # a new sequence number: not a replay
    a.on_received("B", b.outgoing_for("A"))  # the swap went through
    again = a.outgoing_for("B")  # no local step since: the same release again, for free
    assert algorithm.privacy.accountant.releases == 1 and first != retry
    assert all(torch.equal(t, tensors(retry)[k]) for k, t in tensors(first).items())
    assert again is not None and tensors(again).keys() == tensors(first).keys()

    algorithm.local_step({name: torch.ones_like(p) for name, p in algorithm.params.items()})

    assert a.outgoing_for("B") is None  # a new state needs a new release: budget spent
    assert a.counters()["B"].messages_withheld == 1 and b.counters()["A"].rejected == {}


def tensors(payload: bytes | None) -> dict[str, torch.Tensor]:
    assert payload is not None
    return dict(decode_message(payload).tensors)


def private_handler(me: str, peer: str) -> tuple[NodeHandler, Any]:
    """A node's handler and ECL algorithm with exchange privacy that fits one release."""
    params = {"w": torch.zeros(3), "b": torch.ones(2)}
    budget = gaussian_epsilon([(SIGMA, 1)], delta=1e-5) + 1e-9
    accountant = ExchangeAccountant(noise_multiplier=SIGMA, delta=1e-5, epsilon_budget=budget)
    privacy = ExchangePrivacy(peers=[peer], initial=params, clip_norm=0.1, accountant=accountant,
                              generator=torch.Generator())  # fmt: skip
    config = ConsensusConfig(method="ecl-pdmm", learning_rate=0.1)
    algorithm = make_algorithm(config, node=me, neighbours=[peer], params=params, privacy=privacy)
    handler = NodeHandler(name=me, peers=[peer], params=params,
                          swap_schema=algorithm.wire_schema(), lock=threading.Lock(),
                          boot_epoch=1, reuse_releases=True)  # fmt: skip
    handler.attach(algorithm)
    return handler, algorithm


# --- [privacy] in node.toml and the run flags (no network) -------------------------------------

NODE_TOML = {
    "node": {"name": "B", "network": "t", "site_dir": "../data/B"},
    "peers": [{"name": "A", "host": "a", "port": 1}, {"name": "C", "host": "c", "port": 2}],
    "algorithm": {"method": "ecl-pdmm", "learning_rate": 0.05},
}


def write_toml(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "bundle" / "node.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(dumps_toml(data))
    return path


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({"mode": "maybe"}, "privacy mode 'maybe' is unknown"),
        ({"mode": "exchange", "clip_norm": 1.0}, "exactly one of noise_multiplier"),
        ({"mode": "dpsgd", "noise_multiplier": 1.0, "target_epsilon": 1.0, "clip_norm": 1.0},
         "exactly one of"),
        ({"mode": "exchange", "noise_multiplier": 1.0}, r"clip_norm \(--clip C\) must be"),
        ({"mode": "exchange", "noise_multiplier": -1.0, "clip_norm": 1.0}, "positive number"),
        ({"mode": "exchange", "target_epsilon": 8.0, "clip_norm": 1.0}, "needs planned_releases"),
        ({"mode": "dpsgd", "target_epsilon": 8.0, "clip_norm": 1.0}, "needs planned_epochs"),
        ({"mode": "dpsgd", "noise_multiplier": 1.0, "clip_norm": 1.0, "epsilon_budget": 3.0},
         "epsilon_budget applies to exchange mode"),
        ({"mode": "exchange", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 2.0},
         r"delta must lie in \(0, 1\)"),
        ({"mode": "exchange", "noise_multiplier": 1.0, "clip_norm": 1.0, "accountant": "gdp"},
         "accountant 'gdp' is unknown"),
        ({"mode": "off", "sigma": 1.0}, r"unknown field\(s\) \['sigma'\]"),
    ],
)  # fmt: skip
def test_bad_privacy_table_is_refused_with_what_to_fix(tmp_path, privacy, message) -> None:
    with pytest.raises(NodeConfigError, match=message):
        load_node_config(write_toml(tmp_path, NODE_TOML | {"privacy": privacy}))


def test_algorithm_privacy_table_is_refused_not_ignored(tmp_path) -> None:
    algorithm = NODE_TOML["algorithm"] | {"privacy": {"mode": "exchange"}}
    with pytest.raises(NodeConfigError, match=r"move its entries to a top-level \[privacy\]"):
        load_node_config(write_toml(tmp_path, NODE_TOML | {"algorithm": algorithm}))


def test_run_flags_override_the_privacy_table(tmp_path) -> None:
    table = {"mode": "exchange", "noise_multiplier": 2.0, "clip_norm": 0.1}
    path = write_toml(tmp_path, NODE_TOML | {"privacy": table})
    parser = cli._parser()
    run = ["run", "--config", str(path)]

    def privacy(*flags: str, plan: dict[str, Any] | None = None) -> PrivacyConfig:
        overrides = cli.privacy_overrides(parser.parse_args([*run, *flags]))
        return load_node_config(path, deep_merge(plan or {}, overrides)).privacy

    dpsgd = privacy("--dp", "dpsgd", "--noise-multiplier", "1.1", "--clip", "1")
    target = privacy("--epsilon", "3", plan={"privacy": {"planned_releases": 50}})

    assert privacy() == PrivacyConfig(**table)
    assert (dpsgd.mode, dpsgd.noise_multiplier, dpsgd.clip_norm) == ("dpsgd", 1.1, 1.0)
    assert (target.mode, target.target_epsilon, target.noise_multiplier) == ("exchange", 3.0, None)
    assert target.exchange_noise_multiplier(1e-5) > 0
    with pytest.raises(SystemExit):  # --epsilon and --noise-multiplier exclude each other
        parser.parse_args([*run, "--epsilon", "3", "--noise-multiplier", "1"])


def test_provisioned_node_toml_has_privacy_off(tmp_path, build_network) -> None:
    paths = build_network(tmp_path / "net", settings=SETTINGS)
    text = paths["N1"].read_text()
    assert '[privacy]\nmode = "off"' in text and "# target_epsilon" in text
    assert load_node_config(paths["N1"]).privacy == PrivacyConfig()
