"""A live node refuses strangers and hostile messages, and its state does not move."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node_helpers import NodeProcess

from consensus import ConsensusConfig, make_algorithm
from consensus.transport import exchange_pb2 as pb
from consensus.transport import exchange_pb2_grpc as pb_grpc
from consensus.transport.framing import PROTOCOL_VERSION
from consensus.transport.grpc_transport import (
    PeerClient,
    PeerRefused,
    PeerUnavailable,
    RejectedByPeer,
    RetryPolicy,
    TlsMaterial,
    TransportConfig,
    TransportError,
    load_tls,
)
from consensus.transport.tls import channel_credentials
from consensus.wire import Message, MessageHeader, encode_message
from hospital_node.node.config import load_node_config
from hospital_node.node.status import check_health
from hospital_node.provisioning.pki import cert_pem, create_ca, issue_leaf, key_pem, load_ca
from hospital_node.provisioning.provision import revoke
from hospital_node.training.model import ModelConfig, build_model

METHOD = "ecl-pdmm"
SEQUENCES = itertools.count(10**12)  # above anything the live node has seen from N2


@dataclass
class LiveNode:
    """N1 running alone (its neighbours are down), and what an attacker needs."""

    process: NodeProcess
    config: Path
    address: str
    tls: dict[str, TlsMaterial]
    tensors: dict[str, torch.Tensor]  # a valid N2 -> N1 message body
    schema_hash: str
    net: Path  # the provisioning folder (_ca/ and every bundle)

    def client(self, who: str, as_name: str = "N2") -> PeerClient:
        return PeerClient(
            name=as_name, peer="N1", address=self.address, tls=self.tls[who],
            rng=random.Random(0), config=TransportConfig(method=METHOD),
            retry=RetryPolicy(max_attempts=1),
        )  # fmt: skip

    def counters(self) -> dict[str, Any]:
        """Gate and algorithm-facing counters from a status.json written after this call."""
        asked = time.time()
        status = self.process.wait_for(
            lambda s: s["updated_at"] > asked + 0.1, timeout=30, what="a fresh status.json"
        )
        n2 = status["peers"]["N2"]
        return {
            "accepted": status["gate"]["accepted"],
            "n2_received": n2["messages_received"],
            "n2_applied": n2["applied"],
            "n2_sent": (n2["messages_sent"], n2["bytes_sent"]),
            "swaps_applied": status["server"].get("swaps_applied", 0),
            "rejected": status["gate"]["rejected"],
            "refused_calls": {k: v for k, v in status["server"].items() if k.startswith("refused")},
        }


def _material(ca_pem: bytes, leaf: Any, name: str) -> TlsMaterial:
    return TlsMaterial(ca_cert=ca_pem, cert=cert_pem(leaf.cert), key=key_pem(leaf.key), name=name)


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory, build_network) -> Iterator[LiveNode]:
    root = tmp_path_factory.mktemp("security")
    settings = {"exchange": {"join": "scratch", "idle_timeout_s": 1.0}}
    configs = build_network(root / "net", settings=settings)
    bundle = configs["N1"].parent
    ca = load_ca(root / "net" / "_ca" / "ca.crt", root / "net" / "_ca" / "ca.key")
    ca_pem = cert_pem(ca.cert)
    sans = ("127.0.0.1", "localhost")
    outsider = issue_leaf(ca, "N4", sans=("N4", *sans), valid_days=30)  # same CA, not a peer
    rogue_ca = create_ca("rogue network CA")
    rogue = issue_leaf(rogue_ca, "N2", sans=("N2", *sans), valid_days=30)  # 'N2', other CA
    n2 = configs["N2"].parent
    tls = {
        "N2": load_tls(ca_cert=n2 / "ca.crt", cert=n2 / "N2.crt", key=n2 / "N2.key"),
        "N4": _material(ca_pem, outsider, "N4"),
        "rogue": _material(ca_pem, rogue, "N2"),  # trusts the real CA, presents a foreign cert
    }
    with torch.random.fork_rng():
        model = build_model(ModelConfig())
    config = ConsensusConfig(method=METHOD, learning_rate=0.05)
    params = dict(model.named_parameters())
    algorithm = make_algorithm(config, node="N2", neighbours=["N1", "N3"], params=params)
    node = NodeProcess("N1", configs["N1"], root)
    try:
        node.start()
        node.wait_for(lambda s: s["state"] == "training", timeout=120, what="training")
        port = load_node_config(configs["N1"]).listen.port
        yield LiveNode(
            process=node, config=bundle / "node.toml", address=f"127.0.0.1:{port}", tls=tls,
            tensors=algorithm.outgoing("N1"), schema_hash=algorithm.wire_schema().digest,
            net=root / "net",
        )  # fmt: skip
    finally:
        node.kill()


def encode(
    live: LiveNode,
    *,
    sequence: int,
    tensors: dict[str, torch.Tensor] | None = None,
    **header: Any,
) -> bytes:
    fields = {"sender": "N2", "receiver": "N1", "method": METHOD, "schema_hash": live.schema_hash}
    fields.update(header)
    message = Message(header=MessageHeader(sequence=sequence, **fields),
                      tensors=live.tensors if tensors is None else tensors)  # fmt: skip
    return encode_message(message)


def test_strangers_are_refused_and_change_nothing(live_node: LiveNode) -> None:
    before = live_node.counters()
    valid = encode(live_node, sequence=next(SEQUENCES))

    rogue, outsider = live_node.client("rogue"), live_node.client("N4", as_name="N4")
    with pytest.raises((PeerUnavailable, PeerRefused)):  # foreign CA: the handshake fails
        rogue.swap(valid)
    with pytest.raises(PeerRefused, match="PERMISSION_DENIED"):  # valid cert, not a neighbour
        outsider.swap(valid)
    rogue.close()
    outsider.close()
    for credentials in (
        grpc.ssl_channel_credentials(root_certificates=live_node.tls["N2"].ca_cert),  # no cert
        None,  # no TLS at all
    ):
        channel = (
            grpc.insecure_channel(live_node.address)
            if credentials is None
            else grpc.secure_channel(
                live_node.address, credentials, [("grpc.ssl_target_name_override", "N1")]
            )
        )
        with channel, pytest.raises(grpc.RpcError) as caught:
            request = iter([pb.Chunk(data=valid)])
            list(pb_grpc.ConsensusExchangeStub(channel).Swap(request, timeout=5))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    after = live_node.counters()
    for key in ("accepted", "n2_received", "n2_applied", "swaps_applied"):
        assert after[key] == before[key], key
    assert after["refused_calls"].get("refused.not_a_neighbour", 0) == (
        before["refused_calls"].get("refused.not_a_neighbour", 0) + 1
    )


def test_hostile_messages_from_a_neighbour_are_refused(live_node: LiveNode) -> None:
    client = live_node.client("N2")
    try:
        _send_hostile(live_node, client)
    finally:
        client.close()


def _send_hostile(live_node: LiveNode, client: PeerClient) -> None:
    good = next(SEQUENCES)
    before = live_node.counters()
    reply = client.swap(encode(live_node, sequence=good))  # the one legitimate message
    assert reply
    nan = {k: v.clone() for k, v in live_node.tensors.items()}
    next(iter(nan.values())).view(-1)[0] = float("nan")
    wrong_shape = {k: v[..., :1].clone() for k, v in live_node.tensors.items()}
    hostile = {
        "replayed": encode(live_node, sequence=good),
        "stale": encode(live_node, sequence=good - 1),
        "malformed": b"\x08\0\0\0\0\0\0\0{}garbage",
        "wrong_schema": encode(live_node, sequence=next(SEQUENCES), schema_hash="0" * 64),
        "wrong_shape": encode(live_node, sequence=next(SEQUENCES), tensors=wrong_shape),
        "non_finite": encode(live_node, sequence=next(SEQUENCES), tensors=nan),
        "wrong_receiver": encode(live_node, sequence=next(SEQUENCES), receiver="N3"),
        "unknown_sender": encode(live_node, sequence=next(SEQUENCES), sender="N3"),
        "sequence_jump": encode(live_node, sequence=2**62),  # would lock the edge for good
    }
    for reason, payload in hostile.items():
        with pytest.raises(RejectedByPeer, match=reason):
            client.swap(payload)
    oversized = encode(live_node, sequence=next(SEQUENCES)) + b"\0" * (2 << 20)
    with pytest.raises(RejectedByPeer, match="too_large: announced"):  # on the header
        client.swap(oversized)
    assert client.swap(encode(live_node, sequence=next(SEQUENCES)))  # the edge stays open
    after = live_node.counters()

    assert after["accepted"] == before["accepted"] + 2
    assert after["n2_received"] == before["n2_received"] + 2
    assert after["n2_applied"] == before["n2_applied"] + 2  # only the legitimate ones applied
    assert after["n2_sent"][0] == before["n2_sent"][0] + 2  # answers only to those two
    for reason in hostile:
        assert after["rejected"].get(reason, 0) >= before["rejected"].get(reason, 0) + 1, reason
    too_large = "refused.too_large"
    assert after["refused_calls"][too_large] == before["refused_calls"].get(too_large, 0) + 1
    assert check_health(load_node_config(live_node.config)) == "SERVING"


def test_arbitrary_bytes_never_reach_the_model(live_node: LiveNode) -> None:
    base = encode(live_node, sequence=5)  # stale: even a lucky mutation cannot be accepted
    payloads = st.one_of(
        st.binary(max_size=4096),
        st.lists(st.integers(0, len(base) - 1), min_size=1, max_size=8).map(
            lambda spots: bytes(b ^ 0xFF if i in spots else b for i, b in enumerate(base))
        ),
        st.integers(0, len(base) - 1).map(lambda cut: base[:cut]),
    )
    client = live_node.client("N2")
    before = live_node.counters()

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payload=payloads)
    def send(payload: bytes) -> None:
        with pytest.raises(TransportError):
            client.swap(payload)

    try:
        send()
    finally:
        client.close()
    after = live_node.counters()

    for key in ("accepted", "n2_received", "n2_applied"):
        assert after[key] == before[key], key
    assert sum(after["rejected"].values()) >= sum(before["rejected"].values()) + 20
    assert live_node.process.alive()
    assert check_health(load_node_config(live_node.config)) == "SERVING"


def test_junk_is_never_counted_as_sent(live_node: LiveNode) -> None:
    client = live_node.client("N2")
    before = live_node.counters()
    try:
        for _ in range(30):
            with pytest.raises(RejectedByPeer, match="malformed"):
                client.swap(os.urandom(4096))
    finally:
        client.close()
    after = live_node.counters()

    assert after["n2_sent"] == before["n2_sent"]  # nothing left the node, nothing counted
    assert after["rejected"]["malformed"] >= before["rejected"].get("malformed", 0) + 30


def test_a_stalled_stream_frees_the_edge_after_the_idle_timeout(live_node: LiveNode) -> None:
    channel = grpc.secure_channel(
        live_node.address, channel_credentials(live_node.tls["N2"]),
        [("grpc.ssl_target_name_override", "N1")],
    )  # fmt: skip
    release = threading.Event()

    def stalled() -> Iterator[pb.Chunk]:
        header = pb.Header(protocol_version=PROTOCOL_VERSION, sender="N2", edge="N1--N2",
                           method=METHOD, purpose=pb.PURPOSE_SWAP, total_bytes=1000,
                           sha256=b"\0" * 32, nonce=os.urandom(32))  # fmt: skip
        yield pb.Chunk(header=header)
        release.wait(60)  # announces 1000 bytes, sends none, sets no deadline

    stall = pb_grpc.ConsensusExchangeStub(channel).Swap(stalled())
    assert next(stall).WhichOneof("body") == "proof"  # N1 now holds N2's only call slot
    client = live_node.client("N2")
    try:
        deadline = time.monotonic() + 20  # idle_timeout_s is 1 s here; it used to be 900 s
        while True:
            try:
                assert client.swap(encode(live_node, sequence=next(SEQUENCES)))
                break
            except PeerUnavailable as exc:
                assert "busy" in str(exc) and time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        release.set()
        client.close()
        channel.close()
    assert live_node.counters()["refused_calls"].get("refused.idle_timeout", 0) >= 1


def test_revoked_neighbour_certificate_is_refused_on_an_open_connection(live_node) -> None:
    ca = load_ca(live_node.net / "_ca" / "ca.crt", live_node.net / "_ca" / "ca.key")
    spare = issue_leaf(ca, "N2", sans=("N2", "127.0.0.1", "localhost"), valid_days=30)
    live_node.tls["N2-spare"] = _material(cert_pem(ca.cert), spare, "N2")
    client, real = live_node.client("N2-spare"), live_node.client("N2")
    try:
        assert client.swap(encode(live_node, sequence=next(SEQUENCES)))  # opens the connection

        revoke(live_node.net, "N2", serials=[spare.cert.serial_number])  # also N1's crl.pem

        with pytest.raises(PeerRefused, match="revoked"):
            client.swap(encode(live_node, sequence=next(SEQUENCES)))
        assert real.swap(encode(live_node, sequence=next(SEQUENCES)))  # N2's own certificate
    finally:
        client.close()
        real.close()
    assert live_node.counters()["refused_calls"]["refused.revoked"] == 1
