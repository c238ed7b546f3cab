"""gRPC + mutual TLS on 127.0.0.1 with real certificates: swaps, identity, framing, retries."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transport_helpers import (
    FAST_RETRY,
    ONE_TRY,
    RecordingHandler,
    header,
    raw_stub,
    wait_for,
)

from consensus.transport import exchange_pb2 as pb
from consensus.transport.grpc_common import SERVICE_NAME
from consensus.transport.grpc_transport import (
    ExchangeServer,
    ExchangeWorker,
    PeerRefused,
    PeerUnavailable,
    RejectedByPeer,
    RetryPolicy,
    TlsConfigError,
    TransportConfig,
    load_tls,
)
from consensus.wire import MessageRejected

pytestmark = pytest.mark.timeout(30)


def test_two_nodes_swap_both_ways(serve, connect) -> None:
    alpha = RecordingHandler(b"from alpha")
    beta = RecordingHandler(b"from beta")
    alpha_port = serve("alpha", ("beta",), alpha).port
    beta_port = serve("beta", ("alpha", "gamma"), beta).port

    connect("beta", "alpha", alpha_port).exchange(beta)  # beta initiates
    connect("alpha", "beta", beta_port).exchange(alpha)  # then alpha

    assert alpha.received == [("beta", b"from beta"), ("beta", b"from beta")]
    assert beta.received == [("alpha", b"from alpha"), ("alpha", b"from alpha")]


def test_densenet_sized_payload_streams_in_chunks(serve, connect) -> None:
    out, back = os.urandom(30 * 2**20), os.urandom(30 * 2**20 - 7)
    alpha = RecordingHandler(back)
    server = serve("alpha", ("beta",), alpha)
    client = connect("beta", "alpha", server.port)

    assert client.swap(out) == back
    assert alpha.received == [("beta", out)]
    stats = server.stats()
    assert stats["bytes_received"] == len(out) and stats["bytes_sent"] == len(back)
    assert client.status().bytes_sent == len(out) and client.status().bytes_received == len(back)


def test_fetch_model(serve, connect) -> None:
    server = serve("alpha", ("beta",), RecordingHandler(model=b"model bytes" * 1000))
    assert connect("beta", "alpha", server.port).fetch_model() == b"model bytes" * 1000


def test_client_certificate_from_another_ca_is_refused(serve, connect) -> None:
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha)
    client = connect("beta", "alpha", server.port, retry=ONE_TRY, bundle="rogue-beta")
    with pytest.raises(PeerUnavailable) as err:
        client.swap(b"hello")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert alpha.calls == 0


def test_client_without_certificate_is_refused(serve, tls) -> None:
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha)
    channel, stub = raw_stub(None, tls["alpha"].ca_cert, server.port)
    with channel, pytest.raises(grpc.RpcError) as err:
        list(stub.Swap(iter([header("beta", b"hi"), pb.Chunk(data=b"hi")]), timeout=5))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert alpha.calls == 0


def test_certified_non_neighbour_is_permission_denied(serve, connect) -> None:
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha)
    with pytest.raises(PeerRefused) as err:
        connect("gamma", "alpha", server.port).swap(b"hello")
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "not_a_neighbour" in err.value.detail
    assert alpha.calls == 0 and server.stats()["refused.not_a_neighbour"] == 1


def test_client_refuses_a_server_that_is_not_the_intended_peer(serve, connect) -> None:
    gamma = RecordingHandler(b"x")
    gamma_port = serve("gamma", ("beta",), gamma).port
    client = connect("beta", "alpha", gamma_port, retry=ONE_TRY)  # alpha's name, gamma's address
    with pytest.raises(PeerUnavailable, match="Hostname Verification"):
        client.swap(b"hello")
    assert gamma.calls == 0


def _endless_data(pulled: list[int]) -> Iterator[pb.Chunk]:
    for _ in range(1000):  # 64 MiB if it were all read
        pulled[0] += 1
        yield pb.Chunk(data=b"\0" * 65536)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("sender_mismatch", grpc.StatusCode.PERMISSION_DENIED),
        ("too_large", grpc.StatusCode.INVALID_ARGUMENT),
        ("too_many_bytes", grpc.StatusCode.INVALID_ARGUMENT),
        ("hash_mismatch", grpc.StatusCode.INVALID_ARGUMENT),
        ("no_header", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_streams_are_refused_and_nothing_applied(serve, tls, case: str, code) -> None:
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha, config=TransportConfig(max_payload_bytes=2**20))
    pulled = [0]
    payload = b"payload"
    streams = {
        "sender_mismatch": [header("gamma", payload), pb.Chunk(data=payload)],
        "too_large": [header("beta", b"", total=2**20 + 1, digest=b"\0" * 32)],
        "too_many_bytes": [header("beta", payload), pb.Chunk(data=payload + b"!")],
        "hash_mismatch": [header("beta", payload), pb.Chunk(data=payload[::-1])],
        "no_header": [pb.Chunk(data=payload)],
    }
    requests = itertools.chain(streams[case], _endless_data(pulled) if case == "too_large" else ())
    channel, stub = raw_stub(tls["beta"], tls["beta"].ca_cert, server.port)
    with channel, pytest.raises(grpc.RpcError) as err:
        list(stub.Swap(requests, timeout=10))
    assert err.value.code() == code and case in err.value.details()
    assert alpha.received == [] and server.stats()[f"refused.{case}"] == 1
    assert pulled[0] < 200  # refused on the header: most of the 64 MiB was never sent


def test_transfer_broken_mid_way_is_not_applied(serve, tls) -> None:
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha)
    payload = os.urandom(2**20)

    def broken() -> Iterator[pb.Chunk]:
        yield header("beta", payload)
        yield pb.Chunk(data=payload[: 2**19])
        raise ConnectionError("sender crashed")

    channel, stub = raw_stub(tls["beta"], tls["beta"].ca_cert, server.port)
    with channel, pytest.raises(grpc.RpcError):
        list(stub.Swap(broken(), timeout=5))
    deadline = time.monotonic() + 30  # generous: a loaded machine schedules late
    while not ({"aborted_in_transfer", "refused.truncated"} & server.stats().keys()):
        assert time.monotonic() < deadline, server.stats()
        time.sleep(0.02)
    assert alpha.received == []


def test_handler_rejection_is_invalid_argument_and_nothing_applied(serve, connect) -> None:
    alpha = RecordingHandler(b"x", reject="stale")
    server = serve("alpha", ("beta",), alpha)
    with pytest.raises(RejectedByPeer) as err:
        connect("beta", "alpha", server.port).swap(b"hello")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "stale" in err.value.detail
    assert alpha.received == [] and server.stats()["refused.stale"] == 1


def test_client_handler_rejects_the_reply(serve, connect) -> None:
    server = serve("alpha", ("beta",), RecordingHandler(b"bad reply"))
    beta = RecordingHandler(b"hello", reject="non_finite")
    client = connect("beta", "alpha", server.port)
    with pytest.raises(MessageRejected):
        client.exchange(beta)
    assert beta.received == [] and client.status().replies_rejected == 1


def test_peer_down_retries_with_backoff_then_gives_up(serve, connect) -> None:
    client = connect("beta", "alpha", _stopped_port(serve))
    started = time.monotonic()
    with pytest.raises(PeerUnavailable, match="gave up after 4 attempts"):
        client.swap(b"hello")
    assert time.monotonic() - started < FAST_RETRY.give_up_after_s
    status = client.status()
    assert status.attempts == 4 and status.consecutive_failures == 1
    assert status.next_attempt_at is not None and status.last_success_at is None


def _stopped_port(serve) -> int:
    """A port where a node listened a moment ago and nothing listens now."""
    server = serve("alpha", ("beta",), RecordingHandler())
    server.stop(grace=0)
    return server.port


def test_worker_keeps_going_and_succeeds_when_the_peer_returns(serve, connect) -> None:
    port = _stopped_port(serve)
    beta = RecordingHandler(b"from beta")
    worker = ExchangeWorker(
        handler=beta, clients=[connect("beta", "alpha", port)], mean_interval_s=0.05,
        rng=random.Random(1),
    )  # fmt: skip
    worker.start()
    try:
        wait_for(lambda: worker.status()["alpha"].consecutive_failures >= 2)
        alpha = RecordingHandler(b"from alpha")
        serve("alpha", ("beta",), alpha, port=port)
        wait_for(lambda: alpha.received and beta.received)
    finally:
        worker.stop()
    status = worker.status()["alpha"]
    assert status.last_success_at is not None and status.total_failures >= 2
    assert worker.outcomes()["ok"] >= 1 and worker.outcomes()["failed"] >= 2
    assert beta.received[0] == ("alpha", b"from alpha")


def test_health_check_reports_serving_then_not_serving(serve, tls) -> None:
    server = serve("alpha", ("beta",), RecordingHandler())
    channel, _ = raw_stub(tls["gamma"], tls["gamma"].ca_cert, server.port)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return health.Check(request, timeout=5).status

        assert status("") == status(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        server.set_serving(False)
        assert status(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING


def test_server_refuses_another_hospitals_bundle(tls) -> None:
    with pytest.raises(ValueError, match="certificate is for 'beta'"):
        ExchangeServer(name="alpha", neighbours=(), handler=RecordingHandler(), tls=tls["beta"])


def test_load_tls_refuses_mismatched_files(tmp_path, tls) -> None:
    (tmp_path / "ca.crt").write_bytes(tls["alpha"].ca_cert)
    (tmp_path / "a.crt").write_bytes(tls["alpha"].cert)
    (tmp_path / "b.key").write_bytes(tls["beta"].key)
    (tmp_path / "rogue.crt").write_bytes(tls["rogue-beta"].cert)
    (tmp_path / "rogue.key").write_bytes(tls["rogue-beta"].key)
    with pytest.raises(TlsConfigError, match="is not the key of"):
        load_tls(ca_cert=tmp_path / "ca.crt", cert=tmp_path / "a.crt", key=tmp_path / "b.key")
    with pytest.raises(TlsConfigError, match="not issued by the CA"):
        load_tls(
            ca_cert=tmp_path / "ca.crt", cert=tmp_path / "rogue.crt", key=tmp_path / "rogue.key"
        )


def test_backoff_is_full_jitter_under_the_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=8.0, multiplier=2.0)
    rng = random.Random(3)
    delays = [[policy.backoff(n, rng) for _ in range(200)] for n in (1, 2, 3, 4, 5, 6)]
    for n, samples in enumerate(delays, start=1):
        cap = min(8.0, 2.0 ** (n - 1))
        assert all(0.0 <= d <= cap for d in samples) and max(samples) > 0.8 * cap
    assert policy.backoff(3, random.Random(5)) == policy.backoff(3, random.Random(5))


def test_second_node_on_a_taken_port_fails_loudly(serve) -> None:
    port = serve("alpha", ("beta",), RecordingHandler()).port
    with pytest.raises(OSError, match="port in use"):
        serve("alpha", ("beta",), RecordingHandler(), port=port)
