"""What a hostile neighbour cannot do to the transport: cost a message with junk, hold its call
slot with a quiet or trickling stream, or make the back-off overflow (loopback gRPC, real mTLS)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import grpc
import pytest
from transport_helpers import ONE_TRY, RecordingHandler, header, raw_stub, wait_for

from consensus.transport import exchange_pb2 as pb
from consensus.transport.grpc_transport import (
    PeerUnavailable,
    RejectedByPeer,
    RetryPolicy,
    TransportConfig,
)

pytestmark = pytest.mark.timeout(60)


def test_callee_takes_and_counts_its_message_only_after_the_callers_passed(serve, connect):
    alpha = RecordingHandler(b"alpha's reply", reject="malformed")  # the gate refuses junk
    server = serve("alpha", ("beta",), alpha)
    beta = RecordingHandler(b"junk from beta")
    client = connect("beta", "alpha", server.port, retry=ONE_TRY)

    with pytest.raises(RejectedByPeer, match="malformed"):
        client.exchange(beta)

    assert alpha.order == ["validate"]  # never outgoing_for: no message, no privacy release
    assert alpha.sent == [] and alpha.received == []
    assert beta.sent == []  # refused: it does not count as sent on the caller's side either
    assert "bytes_sent" not in server.stats() and "swaps_answered" not in server.stats()

    alpha.reject = None
    client.exchange(beta)

    assert alpha.order[1:] == ["validate", "outgoing", "deliver"]
    assert alpha.sent == [("beta", len(b"alpha's reply"))]
    assert beta.order == ["outgoing", "outgoing", "validate", "deliver"]
    assert beta.sent == [("alpha", len(b"junk from beta"))]


def _stalled(release: threading.Event) -> Iterator[pb.Chunk]:
    yield header("beta", b"0123456789")  # announces 10 bytes, never sends them
    release.wait(30)


def test_quiet_stream_is_cut_after_the_idle_timeout_and_frees_the_slot(serve, connect, tls):
    alpha = RecordingHandler(b"from alpha")
    config = TransportConfig(idle_timeout_s=0.5, call_timeout_s=30.0, server_threads=4)
    server = serve("alpha", ("beta",), alpha, config=config)
    channel, stub = raw_stub(tls["beta"], tls["beta"].ca_cert, server.port)
    release, outcome = threading.Event(), {}
    stall = stub.Swap(_stalled(release))  # no deadline: only the server can end it
    assert next(stall).WhichOneof("body") == "proof"  # the server holds beta's slot now

    client = connect("beta", "alpha", server.port, retry=ONE_TRY)
    with pytest.raises(PeerUnavailable, match="busy"):
        client.exchange(RecordingHandler(b"from beta"))

    def drain() -> None:
        try:
            list(stall)
        except grpc.RpcError as err:
            outcome["code"] = err.code()

    drainer = threading.Thread(target=drain)
    drainer.start()
    drainer.join(10)
    release.set()
    channel.close()

    assert outcome["code"] == grpc.StatusCode.CANCELLED
    wait_for(lambda: server.stats().get("refused.idle_timeout") == 1)
    assert "refused.truncated" not in server.stats()
    client.exchange(RecordingHandler(b"from beta"))  # the slot is free again
    assert alpha.received == [("beta", b"from beta")]


def test_trickling_stream_is_cut_at_the_call_limit(serve, tls) -> None:
    alpha = RecordingHandler(b"x")
    config = TransportConfig(idle_timeout_s=2.0, call_timeout_s=1.0, server_threads=4)
    server = serve("alpha", ("beta",), alpha, config=config)
    stop = threading.Event()

    def trickle() -> Iterator[pb.Chunk]:
        yield header("beta", b"\0" * 1000)
        while not stop.wait(0.2):  # one byte every 0.2 s: never idle, never done
            yield pb.Chunk(data=b"\0")

    channel, stub = raw_stub(tls["beta"], tls["beta"].ca_cert, server.port)
    with channel, pytest.raises(grpc.RpcError) as err:
        list(stub.Swap(trickle(), timeout=20))
    stop.set()

    assert err.value.code() == grpc.StatusCode.CANCELLED and alpha.received == []
    wait_for(lambda: server.stats().get("refused.call_timeout") == 1)


def test_stalled_call_without_deadline_is_cancelled_by_the_server(serve, tls) -> None:
    alpha = RecordingHandler(b"x")
    config = TransportConfig(call_timeout_s=0.5, idle_timeout_s=30.0, server_threads=4)
    server = serve("alpha", ("beta",), alpha, config=config)
    release = threading.Event()
    channel, stub = raw_stub(tls["beta"], tls["beta"].ca_cert, server.port)
    with channel, pytest.raises(grpc.RpcError) as err:
        list(stub.Swap(_stalled(release)))  # no deadline
    release.set()
    assert err.value.code() == grpc.StatusCode.CANCELLED and alpha.received == []
    wait_for(lambda: server.stats().get("refused.call_timeout") == 1)


def test_call_limit_defaults_to_the_callers_deadline_for_the_largest_message() -> None:
    config = TransportConfig(max_payload_bytes=28_000_000, base_deadline_s=10.0)
    assert config.call_limit_s == pytest.approx(10.0 + 2 * 28.0)
    assert TransportConfig(call_timeout_s=3.0).call_limit_s == 3.0
    with pytest.raises(ValueError, match="positive"):
        TransportConfig(idle_timeout_s=0.0)


def test_backoff_stays_finite_after_thousands_of_failures() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=30.0)
    delays = [policy.backoff(n, random.Random(n)) for n in (1023, 1025, 10**6)]
    assert all(0.0 <= d <= 30.0 for d in delays)
