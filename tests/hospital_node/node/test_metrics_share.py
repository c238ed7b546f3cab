"""Metrics sharing: the signed message, its validation against hostile input, relaying without
loops, and the ShareMetrics call over real mutual TLS on loopback (opt-in on both ends)."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from consensus.transport.grpc_transport import (
    ExchangeServer,
    PeerClient,
    PeerVerifier,
    RejectedByPeer,
    RetryPolicy,
    TransportConfig,
)
from consensus.transport.identity import ProofSigner
from consensus.transport.tls import TlsMaterial, load_tls
from consensus.wire import MessageRejected
from data_tools.labels import FINDINGS
from hospital_node.evaluation.summary import FindingSummary, SiteSummary
from hospital_node.node.config import NodeConfigError, load_node_config
from hospital_node.node.metrics_share import MetricsSharer, MetricsWorker, sign_summary
from hospital_node.node.metrics_wire import MAX_METRICS_BYTES, decode_metrics, encode_metrics
from hospital_node.provisioning.network import parse_network
from hospital_node.provisioning.provision import dumps_toml, provision

NAMES = ("alpha", "beta", "gamma")
NOW = 1_760_000_000.0
FAST = RetryPolicy(max_attempts=1, give_up_after_s=5.0)
CONFIG = TransportConfig(base_deadline_s=5.0, server_threads=4, max_reconnect_backoff_s=0.3)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha -- beta -- gamma -- alpha (a ring), and delta of another network."""
    out = tmp_path_factory.mktemp("metrics-pki")
    hospitals = [{"name": n, "host": "127.0.0.1", "port": 50300 + i, "site_dir": "/data"}
                 for i, n in enumerate(NAMES)]  # fmt: skip
    provision(parse_network({"name": "m", "hospitals": hospitals, "topology": "ring"}), out / "net")
    rogue = [{"name": "delta", "host": "127.0.0.1", "port": 50310, "site_dir": "/d"},
             {"name": "alpha", "host": "127.0.0.1", "port": 50311, "site_dir": "/d"}]  # fmt: skip
    provision(parse_network({"name": "r", "hospitals": rogue, "edges": [["delta", "alpha"]]}),
              out / "rogue")  # fmt: skip
    return out


def tls_of(bundles: Path, name: str, network: str = "net") -> TlsMaterial:
    folder = bundles / network / name
    return load_tls(ca_cert=folder / "ca.crt", cert=folder / f"{name}.crt",
                    key=folder / f"{name}.key")  # fmt: skip


def summary(origin: str, step: int, *, auc: float = 0.8, created_at: float = NOW) -> SiteSummary:
    cells = tuple(
        FindingSummary(f, False, auc, auc - 0.1, min(auc + 0.1, 1.0), 12, 40)
        if k < 10 else FindingSummary(f, True)
        for k, f in enumerate(FINDINGS)
    )  # fmt: skip
    return SiteSummary(origin=origin, method="ecl-pdmm", boot_epoch=2, step=step,
                       created_at=created_at, test_set="local", n_images=52, ci_level=0.95,
                       min_positives=10, findings=cells)  # fmt: skip


class Sink:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, int]] = []

    def __call__(self, s: SiteSummary, via: str, received_at: float) -> None:
        self.rows.append((s.origin, via, s.step))


def sharer(bundles: Path, name: str, sink: Sink | None = None) -> MetricsSharer:
    tls = tls_of(bundles, name)
    peers = [n for n in NAMES if n != name]
    return MetricsSharer(name=name, peers=peers, signer=ProofSigner.from_pem(tls.cert, tls.key),
                         verifier=PeerVerifier.from_pem(tls.ca_cert), boot_epoch=1,
                         sink=sink or Sink(), clock=lambda: NOW + 5)  # fmt: skip


def tampered(payload: bytes, change) -> bytes:
    message = json.loads(payload)
    change(message)
    return json.dumps(message).encode()


# --- the message and its validation --------------------------------------------------------


def test_summaries_travel_and_relay_until_every_site_knows_every_site(bundles):
    sinks = {n: Sink() for n in NAMES}
    nodes = {n: sharer(bundles, n, sinks[n]) for n in NAMES}
    nodes["alpha"].publish(summary("alpha", 100))
    nodes["gamma"].publish(summary("gamma", 300))

    for _ in range(3):  # alpha <-> beta and beta <-> gamma only: gamma reaches alpha via beta
        for a, b in (("alpha", "beta"), ("beta", "gamma")):
            nodes[b].accept_metrics(a, nodes[a].metrics_for(b))
            nodes[a].accept_metrics(b, nodes[b].metrics_for(a))

    assert ("gamma", "beta", 300) in sinks["alpha"].rows  # relayed, with the neighbour named
    assert ("alpha", "beta", 100) in sinks["gamma"].rows
    assert {o for o, _, _ in sinks["beta"].rows} == {"alpha", "gamma"}
    # the same summaries keep arriving and are dropped: relaying ends, nothing is stored twice
    assert len(sinks["alpha"].rows) == 2 and nodes["alpha"].dropped["not_newer"] > 0
    nodes["gamma"].publish(summary("gamma", 400))
    nodes["beta"].accept_metrics("gamma", nodes["gamma"].metrics_for("beta"))
    nodes["alpha"].accept_metrics("beta", nodes["beta"].metrics_for("alpha"))
    assert sinks["alpha"].rows[-1] == ("gamma", "beta", 400)


def test_a_relay_cannot_change_or_invent_another_hospitals_figures(bundles):
    alpha, beta, gamma = (sharer(bundles, n) for n in NAMES)
    gamma.publish(summary("gamma", 300, auc=0.7))
    beta.accept_metrics("gamma", gamma.metrics_for("beta"))
    honest = beta.metrics_for("alpha")

    def inflate(m):
        m["summaries"][0]["summary"]["findings"]["Atelectasis"]["auc"] = 0.99

    alpha.accept_metrics("beta", tampered(honest, inflate))
    forged = sign_summary(ProofSigner.from_pem(*_cert_key(bundles, "beta")), summary("gamma", 900))
    fake = encode_metrics(sender="beta", receiver="alpha", sequence=2**33, entries=(forged,))
    alpha.accept_metrics("beta", fake)

    assert "gamma" not in alpha.snapshot()["known"]
    assert alpha.dropped == {"bad_signature": 1, "wrong_name": 1}


def _cert_key(bundles: Path, name: str, network: str = "net") -> tuple[bytes, bytes]:
    tls = tls_of(bundles, name, network)
    return tls.cert, tls.key


def test_summaries_from_another_network_old_or_from_the_future_are_dropped(bundles):
    alpha = sharer(bundles, "alpha")
    rogue = sign_summary(ProofSigner.from_pem(*_cert_key(bundles, "delta", "rogue")),
                         summary("delta", 5))  # fmt: skip
    old = sign_summary(ProofSigner.from_pem(*_cert_key(bundles, "beta")),
                       summary("beta", 6, created_at=NOW - 8 * 24 * 3600))  # fmt: skip
    ahead = sign_summary(ProofSigner.from_pem(*_cert_key(bundles, "gamma")),
                         summary("gamma", 7, created_at=NOW + 3600))  # fmt: skip
    payload = encode_metrics(sender="beta", receiver="alpha", sequence=1,
                             entries=(rogue, old, ahead))  # fmt: skip

    alpha.accept_metrics("beta", payload)

    assert alpha.snapshot()["known"] == {}
    assert alpha.dropped == {"other_ca": 1, "expired": 1, "future": 1}


def _valid(bundles: Path) -> bytes:
    beta = sharer(bundles, "beta")
    beta.publish(summary("beta", 10))
    return beta.metrics_for("alpha")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m.update(sender="gamma"), "unknown_sender"),
        (lambda m: m.update(receiver="gamma"), "wrong_receiver"),
        (lambda m: m.update(version=2), "malformed"),
        (lambda m: m.update(extra=1), "malformed"),
        (lambda m: m.update(sequence=-1), "malformed"),
        (lambda m: m.update(sequence=True), "malformed"),
        (lambda m: m.update(summaries=[m["summaries"][0]] * 2), "malformed"),
        (lambda m: m.update(summaries=m["summaries"] * 65), "malformed"),
        (lambda m: m["summaries"][0]["summary"].update(step=2**60), "malformed"),
        (lambda m: m["summaries"][0]["summary"].update(test_set="common"), "malformed"),
        (lambda m: m["summaries"][0]["summary"]["findings"].pop("Hernia"), "malformed"),
        (lambda m: m["summaries"][0]["summary"]["findings"]["Mass"].update(auc=1.5), "malformed"),
        (lambda m: m["summaries"][0]["summary"]["findings"]["Mass"].update(n_pos=3), "malformed"),
        (lambda m: m["summaries"][0]["summary"]["findings"]["Mass"].update(ci_low=None),
         "malformed"),
        (lambda m: m["summaries"][0]["summary"]["findings"].update(Mass={"suppressed": 1}),
         "malformed"),
        (lambda m: m["summaries"][0].update(certificate="%%%"), "malformed"),
        (lambda m: m["summaries"][0].update(certificate="A" * 20000), "malformed"),
    ],
)  # fmt: skip
def test_hostile_messages_are_refused_whole(bundles, change, reason):
    alpha = sharer(bundles, "alpha")

    with pytest.raises(MessageRejected) as refused:
        alpha.accept_metrics("beta", tampered(_valid(bundles), change))

    assert refused.value.reason == reason
    assert alpha.snapshot()["known"] == {}


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff\xfe", b"[]", b'{"a": 1, "a": 2}', b'{"x": NaN}', b"[" * 100_000,
     b" " * (MAX_METRICS_BYTES + 1)],
)  # fmt: skip
def test_junk_never_crashes_the_decoder(payload):
    with pytest.raises(MessageRejected):
        decode_metrics(payload, receiver="alpha", authenticated_sender="beta")


def test_replayed_or_old_messages_are_refused(bundles):
    alpha = sharer(bundles, "alpha")
    payload = _valid(bundles)
    alpha.accept_metrics("beta", payload)

    with pytest.raises(MessageRejected, match="replayed"):
        alpha.accept_metrics("beta", payload)
    with pytest.raises(MessageRejected, match="unknown_sender"):
        alpha.accept_metrics("mallory", payload)


# --- over the network -----------------------------------------------------------------------


def _server(bundles: Path, name: str, metrics: MetricsSharer | None) -> ExchangeServer:
    tls = tls_of(bundles, name)
    server = ExchangeServer(name=name, neighbours=[n for n in NAMES if n != name], handler=None,
                            tls=tls, port=0, config=CONFIG, metrics=metrics)  # fmt: skip
    server.start()
    return server


def _client(bundles: Path, name: str, peer: str, port: int) -> PeerClient:
    return PeerClient(name=name, peer=peer, address=f"127.0.0.1:{port}", tls=tls_of(bundles, name),
                      rng=random.Random(0), config=CONFIG, retry=FAST)  # fmt: skip


def test_share_metrics_over_mutual_tls_both_ways(bundles):
    alpha, beta = sharer(bundles, "alpha"), sharer(bundles, "beta")
    alpha.publish(summary("alpha", 11))
    beta.publish(summary("beta", 22))
    server = _server(bundles, "beta", beta)
    worker = MetricsWorker(sharer=alpha, clients={"beta": _client(bundles, "alpha", "beta",
                           server.port)}, interval_s=60, rng=random.Random(0))  # fmt: skip
    try:
        assert worker.exchange("beta")
    finally:
        worker.stop()
        server.stop(0)

    assert alpha.snapshot()["known"]["beta"]["step"] == 22
    assert beta.snapshot()["known"]["alpha"]["step"] == 11
    assert server.stats()["metrics_answered"] == 1


def test_a_node_that_does_not_share_refuses_before_any_data_moves(bundles):
    alpha = sharer(bundles, "alpha")
    alpha.publish(summary("alpha", 11))
    server = _server(bundles, "beta", None)
    client = _client(bundles, "alpha", "beta", server.port)
    worker = MetricsWorker(sharer=alpha, clients={"beta": client}, interval_s=60,
                           rng=random.Random(0))  # fmt: skip
    try:
        with pytest.raises(RejectedByPeer, match="metrics_off"):
            client.share_metrics(alpha.metrics_for("beta"))
        assert not worker.exchange("beta") and worker.not_sharing == {"beta"}
    finally:
        worker.stop()
        server.stop(0)

    stats = server.stats()
    assert stats["refused.metrics_off"] == 2
    assert "bytes_received" not in stats and client.status().bytes_sent == 0


def test_metrics_table_in_node_toml(tmp_path):
    base = {"node": {"name": "N1", "site_dir": "site"},
            "peers": [{"name": "N2", "host": "127.0.0.1", "port": 50001}]}  # fmt: skip
    path = tmp_path / "node.toml"
    path.write_text(dumps_toml(base))
    assert load_node_config(path).metrics.share is False  # off by default

    path.write_text(dumps_toml({**base, "metrics": {"share": True, "min_positives": 5}}))
    config = load_node_config(path)
    assert config.metrics.share and config.metrics.min_positives == 5

    for bad in ({"share": "maybe"}, {"min_positives": 0}, {"publish": True}):
        path.write_text(dumps_toml({**base, "metrics": bad}))
        with pytest.raises(NodeConfigError, match="metrics"):
            load_node_config(path)


def test_encoding_is_compact_enough_for_a_large_network(bundles):
    signer = ProofSigner.from_pem(*_cert_key(bundles, "alpha"))
    entries = tuple(sign_summary(signer, summary("alpha", i)) for i in range(64))
    payload = encode_metrics(sender="alpha", receiver="beta", sequence=1, entries=entries)
    assert len(payload) < MAX_METRICS_BYTES
    assert base64.b64decode(json.loads(payload)["summaries"][0]["certificate"])
