"""Withheld messages (privacy budget spent) and a refused FetchModel, over loopback gRPC."""

from __future__ import annotations

import grpc
import pytest
from transport_helpers import RecordingHandler, header, raw_stub

from consensus.transport import exchange_pb2 as pb
from consensus.transport.grpc_transport import RejectedByPeer

pytestmark = pytest.mark.timeout(30)


def test_withheld_reply_still_delivers_the_callers_message(serve, connect) -> None:
    alpha = RecordingHandler(None)  # alpha's budget is spent: it answers with nothing
    beta = RecordingHandler(b"from beta")
    server = serve("alpha", ("beta",), alpha)
    client = connect("beta", "alpha", server.port)

    client.exchange(beta)

    assert alpha.received == [("beta", b"from beta")]
    assert beta.received == [] and beta.withheld == ["alpha"]
    status, stats = client.status(), server.stats()
    assert status.replies_withheld == 1 and status.replies_rejected == 0
    assert status.total_successes == 1 and status.total_failures == 0
    assert stats["withheld_sent"] == 1 and stats["swaps_applied"] == 1
    assert not [k for k in stats if k.startswith("refused.")]


def test_withheld_request_still_gets_the_reply(serve, connect) -> None:
    alpha = RecordingHandler(b"from alpha")
    beta = RecordingHandler(None)  # beta's budget is spent, it still starts the swap
    server = serve("alpha", ("beta",), alpha)
    client = connect("beta", "alpha", server.port)

    client.exchange(beta)

    assert alpha.received == [] and alpha.withheld == ["beta"]
    assert beta.received == [("alpha", b"from alpha")]
    stats = server.stats()
    assert stats["withheld_received"] == 1 and "swaps_applied" not in stats
    assert stats.get("bytes_received", 0) == 0 and client.status().bytes_sent == 0


def test_withheld_header_with_a_payload_is_refused(serve, tls) -> None:
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha)
    payload = b"sneaked in"
    chunk = header("beta", payload)
    chunk.header.withheld = True
    channel, stub = raw_stub(tls["beta"], tls["beta"].ca_cert, server.port)
    with channel, pytest.raises(grpc.RpcError) as err:
        list(stub.Swap(iter([chunk, pb.Chunk(data=payload)]), timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad_withheld" in err.value.details()
    assert alpha.received == [] and alpha.withheld == []


def test_refused_fetch_model_is_final_not_retried(serve, connect) -> None:
    server = serve("alpha", ("beta",), RecordingHandler(model=None))
    client = connect("beta", "alpha", server.port)
    with pytest.raises(RejectedByPeer) as err:
        client.fetch_model()
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "model_withheld" in err.value.detail
    assert client.status().attempts == 1 and server.stats()["refused.model_withheld"] == 1
