"""A hostile neighbour against a real node in process (loopback gRPC, real certificates): refused
junk costs no privacy release and counts nothing; reset-edge reopens an edge; revoked nodes stop."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
import torch

from consensus import ConsensusConfig, make_algorithm
from consensus.accounting import ExchangeAccountant
from consensus.private_exchange import ExchangePrivacy
from consensus.transport.grpc_transport import (
    PeerClient,
    RejectedByPeer,
    RetryPolicy,
    TlsConfigError,
    TransportConfig,
    load_tls,
)
from consensus.wire import Message, MessageHeader, MessageRejected, encode_message
from hospital_node import cli
from hospital_node.node.config import load_node_config
from hospital_node.node.handler import NodeHandler
from hospital_node.node.maintenance import reset_edge
from hospital_node.node.network import peer_verifier
from hospital_node.node.runtime import HospitalNode
from hospital_node.node.state import NodeStateError
from hospital_node.provisioning.provision import revoke

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]
IN_PROCESS = {
    "exchange": {"join": "scratch"},
    "training": {"checkpoint_every": 4},
    "evaluation": {"every": 0},
    "run": {"max_steps_per_second": 20.0},
}
EXCHANGE = {"mode": "exchange", "noise_multiplier": 5.0, "clip_norm": 0.05}


def message(node: HospitalNode, sender: str, receiver: str, sequence: int) -> bytes:
    """A valid `sender` -> `receiver` message for `node`'s model and method."""
    params = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(3))
              for n, p in node.params.items()}  # fmt: skip
    others = [p for p in node.config.peer_names if p != sender] + [node.config.name]
    algorithm = make_algorithm(node.config.consensus, node=sender, neighbours=others,
                               params=params)  # fmt: skip
    digest = algorithm.wire_schema().digest
    header = MessageHeader(sender=sender, receiver=receiver, method=algorithm.method,
                           schema_hash=digest, sequence=sequence)  # fmt: skip
    return encode_message(Message(header=header, tensors=algorithm.outgoing(receiver)))


def attacker(bundle: Path, node: HospitalNode) -> PeerClient:
    """N2's client towards `node`, with N2's real bundle; one attempt per call."""
    name = bundle.name
    tls = load_tls(ca_cert=bundle / "ca.crt", cert=bundle / f"{name}.crt",
                   key=bundle / f"{name}.key")  # fmt: skip
    return PeerClient(
        name=name, peer=node.config.name, address=f"127.0.0.1:{node.config.listen.port}",
        tls=tls, rng=random.Random(0), config=TransportConfig(method=node.config.consensus.method),
        retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip


def test_refused_junk_costs_no_privacy_release_and_is_not_counted_as_sent(
    tmp_path, build_network
) -> None:
    paths = build_network(tmp_path / "net", settings=IN_PROCESS)
    # N3 starts no swaps of its own (initiate = "lower"): every release here answers a caller.
    node = HospitalNode(config=load_node_config(paths["N3"], {"privacy": EXCHANGE}))
    node.initialize()
    trainer = threading.Thread(target=node.run)
    client = attacker(paths["N2"].parent, node)
    junk = os.urandom(len(message(node, "N2", "N3", 1)))
    try:
        trainer.start()
        started, calls = node.step, 0
        while calls < 40 or node.step < started + 5:  # local steps between the junk calls
            calls += 1
            with pytest.raises(RejectedByPeer, match="malformed"):
                client.swap(junk)
        junk_counters = node.handler.counters()["N2"]
        junk_releases = node.privacy.exchange.accountant.releases

        reply = client.swap(message(node, "N2", "N3", 5 << 32))  # one real swap
    finally:
        client.close()
        node.stop_event.set()
        trainer.join(30)
        node.shutdown(status="interrupted")

    assert junk_releases == 0  # it was one release per local step
    assert junk_counters.messages_sent == 0 and junk_counters.bytes_sent == 0
    assert junk_counters.rejected["malformed"] == calls
    assert reply is not None and node.privacy.exchange.accountant.releases == 1
    counters = node.handler.counters()["N2"]
    assert counters.messages_sent == 1 and counters.bytes_sent == len(reply)


def test_junk_does_not_confirm_a_pending_release() -> None:
    params = {"w": torch.zeros(3), "b": torch.ones(2)}
    accountant = ExchangeAccountant(noise_multiplier=5.0, delta=1e-5)
    privacy = ExchangePrivacy(peers=["B"], initial=params, clip_norm=0.1, accountant=accountant,
                              generator=torch.Generator())  # fmt: skip
    config = ConsensusConfig(method="ecl-pdmm", learning_rate=0.1)
    algorithm = make_algorithm(config, node="A", neighbours=["B"], params=params, privacy=privacy)
    handler = NodeHandler(name="A", peers=["B"], params=params, lock=threading.Lock(),
                          swap_schema=algorithm.wire_schema(), boot_epoch=1,
                          reuse_releases=True)  # fmt: skip
    handler.attach(algorithm)
    first = handler.outgoing_for("B")
    with pytest.raises(MessageRejected):
        handler.on_received("B", b"\x08" + b"\0" * 30)  # junk from B: no confirmation

    algorithm.local_step({name: torch.ones_like(p) for name, p in params.items()})
    again = handler.outgoing_for("B")

    assert accountant.releases == 1 and first is not None and again is not None
    assert handler.counters()["B"].messages_sent == 0  # nothing was delivered yet


def test_reset_edge_reopens_an_edge_a_high_sequence_closed(tmp_path, build_network, capsys):
    paths = build_network(tmp_path / "net", settings=IN_PROCESS)
    config = load_node_config(paths["N1"])
    high = 1000 << 32  # N2 "at boot epoch 1000": within the jump bound, so it was taken
    node = HospitalNode(config=config)
    node.initialize()
    try:
        node.handler.on_received("N2", message(node, "N2", "N1", high))
        with pytest.raises(MessageRejected, match="stale"):  # N2's real boot epoch is 7
            node.handler.on_received("N2", message(node, "N2", "N1", 7 << 32))
        node.run(max_steps=4)
        with pytest.raises(NodeStateError, match="in use by another process"):
            reset_edge(config, "N2")  # the node still runs
    finally:
        node.shutdown(status="interrupted")

    assert cli.main(["reset-edge", "--config", str(paths["N1"]), "--peer", "N9"]) == 2
    assert cli.main(["reset-edge", "--config", str(paths["N1"]), "--peer", "N2"]) == 0
    assert f"forgot N2's last sequence {high} (swap)" in capsys.readouterr().out
    again = HospitalNode(config=config)
    again.initialize()
    try:
        again.handler.on_received("N2", message(again, "N2", "N1", 8 << 32))  # taken again
        assert again.handler.counters()["N2"].messages_received == 2
    finally:
        again.shutdown(status="interrupted")


def test_a_node_whose_certificate_is_revoked_does_not_start(tmp_path, build_network) -> None:
    paths = build_network(tmp_path / "net")
    config = load_node_config(paths["N1"])
    tls = load_tls(ca_cert=config.paths.ca_cert, cert=config.paths.cert, key=config.paths.key)
    assert peer_verifier(config, tls).revocation.number == 1  # provisioned: an empty list

    revoke(tmp_path / "net", "N1", reason="cessation")

    with pytest.raises(TlsConfigError, match="revoked.*renewed bundle"):
        peer_verifier(config, tls)
