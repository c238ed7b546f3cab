"""Configuration, the node-side handler interface and the errors shared by server and client."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from consensus.transport import exchange_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ConsensusExchange"].full_name
MIB = 1 << 20


class SwapHandler(Protocol):
    """What the transport needs from a node; the node implements it (thread-safe: calls arrive
    from gRPC server threads and from the exchange worker at the same time).

    Order of one swap, on both ends: nothing is taken, counted or confirmed for a peer until
    its message has passed `validate` (the node's gate). The callee reads the caller's whole
    message and calls `validate`; only then `outgoing_for` (which may cost a privacy release),
    `deliver` (queue the validated message), and, once its reply is streamed, `on_sent`. The
    caller calls `outgoing_for` (its message must leave first), and after the reply: `on_sent`,
    `validate`, `deliver`. Taking our message before delivering the peer's keeps both sides
    sending the state they had before the swap, as the in-memory transport does.

    `validate` raises consensus.wire.MessageRejected to refuse a payload; any method may raise
    NodeNotReady (e.g. no model yet) to make the caller retry later.

    Withheld messages (docs/privacy.md, "Budget"): `outgoing_for` returns None when this node
    sends nothing on the edge because its privacy budget is spent. The swap still happens, so
    the node still receives; the transport announces the direction as `withheld` and the peer's
    transport calls its `on_withheld` instead of `validate`/`deliver`: the peer applies nothing
    and keeps its state for the edge. A withheld message is not a rejection. `model_for` raises
    ModelWithheld when the node does not serve its model (exchange privacy is on).
    """

    def outgoing_for(self, peer: str) -> bytes | None: ...

    def validate(self, peer: str, payload: bytes) -> Any: ...

    def deliver(self, peer: str, validated: Any, num_bytes: int) -> None: ...

    def on_withheld(self, peer: str) -> None: ...

    def on_sent(self, peer: str, num_bytes: int) -> None: ...

    def model_for(self, peer: str) -> bytes: ...


class MetricsHandler(Protocol):
    """What the transport needs from a node that shares metrics ([metrics] share = true).

    `accept_metrics` validates a neighbour's metrics message (raising
    consensus.wire.MessageRejected to refuse it) and keeps what is new; `metrics_for` is this
    node's message for that neighbour. Both run on the callee for every ShareMetrics call, and
    on the caller after the reply arrived. The payload is opaque to the transport.
    """

    def accept_metrics(self, peer: str, payload: bytes) -> None: ...

    def metrics_for(self, peer: str) -> bytes: ...


class NodeNotReady(RuntimeError):
    """Raised by a handler that cannot take part yet; the peer sees UNAVAILABLE and retries."""


class ModelWithheld(RuntimeError):
    """Raised by `model_for` when the node does not serve its raw model (exchange privacy:
    it would bypass the noise). The peer sees FAILED_PRECONDITION (RejectedByPeer) and should
    not ask this node again."""


class TransportError(Exception):
    """An exchange with `peer` failed; `code` is the gRPC status (None for local checks)."""

    def __init__(self, peer: str, code: grpc.StatusCode | None, detail: str) -> None:
        name = code.name if code is not None else "LOCAL"
        super().__init__(f"{peer}: {name}: {detail}")
        self.peer = peer
        self.code = code
        self.detail = detail


class PeerUnavailable(TransportError):
    """Down, unreachable, overloaded or too slow after every retry; try again later."""


class PeerRefused(TransportError):
    """An identity check failed (ours or theirs): wrong CA, not a neighbour, wrong server."""


class RejectedByPeer(TransportError):
    """The peer refused our payload (INVALID_ARGUMENT etc.); retrying the same bytes won't help."""


class BadReply(TransportError):
    """The peer's reply broke the framing rules (size, digest, header)."""


RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_REFUSED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
_REJECTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def error_for_status(peer: str, code: grpc.StatusCode, detail: str) -> TransportError:
    """The exception the client raises for a final (not retried) gRPC status."""
    if code in RETRYABLE:
        return PeerUnavailable(peer, code, detail)
    if code in _REFUSED:
        return PeerRefused(peer, code, detail)
    if code in _REJECTED:
        return RejectedByPeer(peer, code, detail)
    return TransportError(peer, code, detail)


@dataclass(frozen=True, kw_only=True)
class TransportConfig:
    """Sizes, deadlines and connection settings; the same values should be used on every node."""

    method: str = ""  # consensus method name put in headers; a mismatch is refused early
    chunk_size: int = MIB
    # Largest payload announced or accepted, refused on the header before any data moves. A
    # node sets it from its model (consensus.wire.message_size_limit); this default is for
    # tools and tests only.
    max_payload_bytes: int = 256 * MIB
    # Largest metrics message (ShareMetrics), refused on the header like a swap payload.
    max_metrics_bytes: int = 256 * 1024
    base_deadline_s: float = 10.0
    min_throughput_bytes_per_s: float = 1e6  # slowest link a deadline still allows for
    idle_timeout_s: float = 5.0  # server: the caller's next frame must arrive within this
    call_timeout_s: float | None = None  # server: whole-call limit; None: deadline_for(max)
    max_concurrent_calls: int = 8
    server_threads: int = 8
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_reconnect_backoff_s: float = 10.0

    def __post_init__(self) -> None:
        if not 16 * 1024 <= self.chunk_size <= 16 * MIB:
            raise ValueError(f"chunk_size must be between 16 KiB and 16 MiB, got {self.chunk_size}")
        if min(self.max_payload_bytes, self.max_metrics_bytes) < 1:
            raise ValueError("max_payload_bytes and max_metrics_bytes must be positive")
        if self.min_throughput_bytes_per_s <= 0:
            raise ValueError("min_throughput_bytes_per_s must be positive")
        if self.idle_timeout_s <= 0 or (
            self.call_timeout_s is not None and self.call_timeout_s <= 0
        ):
            raise ValueError("idle_timeout_s and call_timeout_s must be positive")

    def deadline_for(self, payload_bytes: int) -> float:
        """Seconds allowed for one swap: both directions at the minimum throughput, plus a base."""
        return self.base_deadline_s + 2 * payload_bytes / self.min_throughput_bytes_per_s

    @property
    def call_limit_s(self) -> float:
        """Longest a server lets one call run: the caller's deadline for the largest message."""
        if self.call_timeout_s is not None:
            return self.call_timeout_s
        return self.deadline_for(self.max_payload_bytes)

    @property
    def max_message_bytes(self) -> int:
        """gRPC per-message limit: a data frame plus protobuf overhead, well above chunk_size."""
        return max(4 * MIB, 2 * self.chunk_size)

    def common_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
        ]

    def server_options(self) -> list[tuple[str, int]]:
        return [
            *self.common_options(),
            ("grpc.so_reuseport", 0),  # a second node on the same port fails loudly
            # accept the clients' keepalive pings during long, quiet calls
            ("grpc.http2.min_recv_ping_interval_without_data_ms", int(self.keepalive_time_s * 500)),
        ]

    def channel_options(self, peer: str) -> list[tuple[str, int | str]]:
        return [
            *self.common_options(),
            # TLS hostname check against the peer's NAME (a DNS SAN of its certificate), so the
            # server must hold the network CA's certificate for exactly that hospital.
            ("grpc.ssl_target_name_override", peer),
            ("grpc.enable_retries", 0),  # RetryPolicy is the only retry layer
            ("grpc.max_reconnect_backoff_ms", int(self.max_reconnect_backoff_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.initial_reconnect_backoff_ms", 100),
        ]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential back-off with full jitter on retryable statuses, bounded in attempts and time."""

    max_attempts: int = 5
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    give_up_after_s: float = 300.0  # one swap() never takes longer than this, retries included

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff_s <= 0 or self.multiplier < 1:
            raise ValueError("need max_attempts >= 1, initial_backoff_s > 0, multiplier >= 1")

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max, initial * multiplier**(failures-1))]."""
        # The exponent is capped: 2.0 ** 1024 overflows, and after 64 doublings every
        # ceiling is far above max_backoff_s anyway.
        ceiling = self.initial_backoff_s * self.multiplier ** min(max(failures - 1, 0), 64)
        return rng.uniform(0.0, min(self.max_backoff_s, ceiling))
