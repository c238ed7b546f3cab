"""Test doubles and raw-stream helpers for the gRPC transport tests (imported by the tests)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable

import grpc

from consensus.transport import exchange_pb2 as pb
from consensus.transport import exchange_pb2_grpc as pb_grpc
from consensus.transport.framing import PROTOCOL_VERSION
from consensus.transport.grpc_transport import (
    ModelWithheld,
    RetryPolicy,
    TlsMaterial,
    TransportConfig,
)
from consensus.transport.tls import channel_credentials
from consensus.wire import MessageRejected

CONFIG = TransportConfig(base_deadline_s=5.0, server_threads=4, max_reconnect_backoff_s=0.3)
FAST_RETRY = RetryPolicy(
    max_attempts=4, initial_backoff_s=0.05, max_backoff_s=0.2, give_up_after_s=3.0
)
ONE_TRY = RetryPolicy(max_attempts=1, give_up_after_s=5.0)


class RecordingHandler:
    """Test double of the node: hands out canned bytes, records what it applied."""

    def __init__(
        self,
        outgoing: bytes | None = b"",
        *,
        model: bytes | None = b"",
        reject: str | None = None,
    ) -> None:
        self.outgoing = outgoing  # None: withheld (privacy budget spent)
        self.model = model  # None: refuses FetchModel (exchange privacy)
        self.reject = reject
        self.received: list[tuple[str, bytes]] = []
        self.sent: list[tuple[str, int]] = []  # what on_sent reported (delivered messages)
        self.order: list[str] = []  # validate / outgoing / deliver, as called
        self.withheld: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()

    def outgoing_for(self, peer: str) -> bytes | None:
        with self._lock:
            self.calls += 1
            self.order.append("outgoing")
        return self.outgoing

    def on_withheld(self, peer: str) -> None:
        with self._lock:
            self.calls += 1
            self.withheld.append(peer)

    def validate(self, peer: str, payload: bytes) -> bytes:
        with self._lock:
            self.calls += 1
            self.order.append("validate")
        if self.reject:
            raise MessageRejected(self.reject, "sequence 3 is not newer than 7")
        return payload

    def deliver(self, peer: str, validated: bytes, num_bytes: int) -> None:
        with self._lock:
            self.received.append((peer, validated))
            self.order.append("deliver")

    def on_sent(self, peer: str, num_bytes: int) -> None:
        with self._lock:
            self.sent.append((peer, num_bytes))

    def model_for(self, peer: str) -> bytes:
        with self._lock:
            self.calls += 1
        if self.model is None:
            raise ModelWithheld("exchange privacy: the raw model stays home")
        return self.model


def raw_stub(material: TlsMaterial | None, ca: bytes, port: int, target: str = "alpha"):
    """A bare stub for hand-made streams; `material=None` connects without a client certificate."""
    if material is None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        creds = channel_credentials(material)
    options = [("grpc.ssl_target_name_override", target)]
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options)
    return channel, pb_grpc.ConsensusExchangeStub(channel)


def header(sender: str, payload: bytes, *, total: int | None = None, digest: bytes | None = None):
    return pb.Chunk(
        header=pb.Header(
            protocol_version=PROTOCOL_VERSION, sender=sender, edge="alpha--beta",
            purpose=pb.PURPOSE_SWAP,
            total_bytes=len(payload) if total is None else total,
            sha256=digest or hashlib.sha256(payload).digest(), nonce=os.urandom(32),
        )
    )  # fmt: skip


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
