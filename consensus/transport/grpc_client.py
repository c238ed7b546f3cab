"""gRPC client side of the consensus exchange: one peer, retries with back-off, per-peer status."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import NoReturn

import grpc

from consensus.transport import exchange_pb2 as pb
from consensus.transport import exchange_pb2_grpc as pb_grpc
from consensus.transport.framing import (
    PROTOCOL_VERSION,
    FramingError,
    edge_name,
    frames,
    read_announcement,
    read_payload,
    read_proof,
)
from consensus.transport.grpc_common import (
    RETRYABLE,
    BadReply,
    PeerRefused,
    PeerUnavailable,
    RetryPolicy,
    SwapHandler,
    TransportConfig,
    TransportError,
    error_for_status,
)
from consensus.transport.identity import NONCE_BYTES, IdentityError, PeerVerifier, verify_proof
from consensus.transport.tls import TlsMaterial, channel_credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerStatus:
    """What the node shows in `status` for one peer (times are Unix seconds, None if never)."""

    peer: str
    address: str
    consecutive_failures: int = 0
    next_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    total_successes: int = 0
    total_failures: int = 0
    replies_rejected: int = 0  # replies this node's handler refused (e.g. MessageRejected)
    replies_withheld: int = 0  # replies with no message: the peer's privacy budget is spent
    attempts: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_duration_s: float | None = None


class PeerClient:
    """Talks to one neighbour over one mutual-TLS channel; thread-safe, one call at a time.

    The server is verified three times: TLS checks its certificate chains to the network CA
    and carries the peer's name as a DNS SAN (target name override = peer name); on every call
    its identity proof (its certificate and a signature over our fresh nonce) must pass
    `verifier` (validity dates, revocation list) before we send any data; and the reply header
    must name the peer as sender.
    """

    def __init__(
        self,
        *,
        name: str,
        peer: str,
        address: str,
        tls: TlsMaterial,
        rng: random.Random,
        config: TransportConfig | None = None,
        retry: RetryPolicy | None = None,
        verifier: PeerVerifier | None = None,
    ) -> None:
        self.name = name
        self.peer = peer
        self.address = address
        self._config = config or TransportConfig()
        self._retry = retry or RetryPolicy()
        self._rng = rng
        self._verifier = verifier or PeerVerifier.from_pem(tls.ca_cert)
        self._channel = grpc.secure_channel(
            address, channel_credentials(tls), options=self._config.channel_options(peer)
        )
        self._stub = pb_grpc.ConsensusExchangeStub(self._channel)
        self._call_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._status = PeerStatus(peer=peer, address=address)
        self._not_before = 0.0  # monotonic time before which the worker should not call again
        self._closed = threading.Event()

    # -- public API -------------------------------------------------------------------------------

    def swap(self, outgoing: bytes | None | Callable[[], bytes | None]) -> bytes | None:
        """Send our message for this edge, return the peer's; retried per the RetryPolicy.

        Pass a callable to take a fresh message on every attempt: a retry then never resends
        a sequence number the peer may already have applied (it would refuse it as a replay).
        None, sent or returned, is a withheld message (that side's privacy budget is spent):
        no payload moves in that direction, the other direction still does.
        """
        return self._swap(outgoing)[1]

    def exchange(self, handler: SwapHandler) -> None:
        """One full swap for the node (SwapHandler): outgoing_for(peer) -> swap -> on_sent ->
        validate -> deliver, or on_withheld(peer) when the peer withheld its message.

        validate's refusal (consensus.wire.MessageRejected) propagates to the caller.
        """
        sent, reply = self._swap(lambda: handler.outgoing_for(self.peer))
        if sent is not None:  # the peer answered, so it took (and validated) our message
            handler.on_sent(self.peer, sent)
        if reply is None:
            self._add("replies_withheld", 1)
            handler.on_withheld(self.peer)
            return
        try:
            validated = handler.validate(self.peer, reply)
        except Exception as exc:
            self._add("replies_rejected", 1, last_error=f"reply refused by {self.name}: {exc}")
            raise
        handler.deliver(self.peer, validated, len(reply))

    def _swap(
        self, outgoing: bytes | None | Callable[[], bytes | None]
    ) -> tuple[int | None, bytes | None]:
        """(bytes we sent, None if withheld; the peer's reply) of the attempt that succeeded."""
        make = outgoing if callable(outgoing) else lambda: outgoing
        with self._call_lock:
            return self._with_retries("swap", lambda budget: self._swap_once(make(), budget))

    def fetch_model(self) -> bytes:
        """The peer's current model (wire-format bytes), e.g. for a node joining late."""
        with self._call_lock:
            return self._with_retries("fetch_model", self._fetch_once)

    def share_metrics(self, payload: bytes) -> bytes:
        """Send our metrics message, return the peer's (both ends must share metrics: a peer
        that does not refuses with FAILED_PRECONDITION `metrics_off`, RejectedByPeer)."""
        with self._call_lock:
            _, reply = self._with_retries(
                "share_metrics",
                lambda budget: self._stream_once(payload, budget, pb.PURPOSE_METRICS),
            )
        if reply is None:  # read_announcement allows `withheld` on swaps only
            raise BadReply(self.peer, None, "empty metrics reply")
        return reply

    def status(self) -> PeerStatus:
        with self._state_lock:
            return self._status

    def ready_at(self) -> float:
        """Monotonic time before which another call would only hit the same failure."""
        with self._state_lock:
            return self._not_before

    def close(self) -> None:
        """Interrupt any back-off wait and close the channel."""
        self._closed.set()
        self._channel.close()

    # -- one attempt ------------------------------------------------------------------------------

    def _swap_once(self, payload: bytes | None, budget: float) -> tuple[int | None, bytes | None]:
        return self._stream_once(payload, budget, pb.PURPOSE_SWAP)

    def _stream_once(
        self, payload: bytes | None, budget: float, purpose: int
    ) -> tuple[int | None, bytes | None]:
        """One Swap (or ShareMetrics) call: our header, the peer's proof, then our data."""
        size = 0 if payload is None else len(payload)
        nonce = os.urandom(NONCE_BYTES)
        request = frames(
            payload,
            sender=self.name,
            edge=edge_name(self.name, self.peer),
            method=self._config.method,
            purpose=purpose,
            chunk_size=self._config.chunk_size,
            nonce=nonce,
        )
        checked = threading.Event()
        verified: list[bool] = []

        def requests() -> Iterator[pb.Chunk]:
            yield next(request)  # the header; the data only once the server proved who it is
            checked.wait()
            if verified:
                yield from request

        rpc = self._stub.ShareMetrics if purpose == pb.PURPOSE_METRICS else self._stub.Swap
        replies = rpc(requests(), timeout=min(self._config.deadline_for(size), budget))
        try:
            self._check_proof(replies, nonce, purpose)
            verified.append(True)
        finally:
            checked.set()  # whatever happened: never leave gRPC's request thread waiting
        reply = self._read_reply(replies, purpose)
        self._add("bytes_sent", size)
        return (None if payload is None else size), reply

    def _fetch_once(self, budget: float) -> bytes:
        timeout = min(self._config.deadline_for(self._config.max_payload_bytes // 2), budget)
        nonce = os.urandom(NONCE_BYTES)
        request = pb.ModelRequest(
            sender=self.name,
            method=self._config.method,
            nonce=nonce,
            protocol_version=PROTOCOL_VERSION,
        )
        replies = self._stub.FetchModel(request, timeout=timeout)
        self._check_proof(replies, nonce, pb.PURPOSE_MODEL)
        return self._read_reply(replies, pb.PURPOSE_MODEL)

    def _check_proof(self, replies: Iterator[pb.Chunk], nonce: bytes, purpose: int) -> None:
        """The server's first frame must prove it holds a valid, unrevoked certificate for the
        peer's name (PeerRefused otherwise: an identity problem, not retried)."""
        try:
            proof = read_proof(replies)
            verify_proof(
                self._verifier,
                certificate_der=proof.certificate,
                signature=proof.signature,
                callee=self.peer,
                caller=self.name,
                purpose=purpose,
                nonce=nonce,
            )
        except FramingError as exc:
            replies.cancel()
            raise BadReply(self.peer, None, str(exc)) from exc
        except IdentityError as exc:
            replies.cancel()
            raise PeerRefused(self.peer, None, f"server at {self.address}: {exc}") from exc

    def _read_reply(self, replies: Iterator[pb.Chunk], purpose: int) -> bytes | None:
        """The reply's payload, or None for a withheld swap reply (read_announcement allows
        `withheld` on swaps only, with 0 bytes)."""
        config = self._config
        limit = config.max_metrics_bytes if purpose == pb.PURPOSE_METRICS else None
        try:
            announcement = read_announcement(replies, max_bytes=limit or config.max_payload_bytes)
            if announcement.sender != self.peer:
                raise PeerRefused(
                    self.peer,
                    None,
                    f"server at {self.address} answered as {announcement.sender!r}; "
                    "check the peer's address in node.toml",
                )
            if announcement.purpose != purpose:
                raise BadReply(
                    self.peer, None, f"reply purpose {announcement.purpose} != {purpose}"
                )
            payload = read_payload(replies, announcement)
        except FramingError as exc:
            replies.cancel()
            raise BadReply(self.peer, None, str(exc)) from exc
        except TransportError:
            replies.cancel()
            raise
        self._add("bytes_received", len(payload))
        return None if announcement.withheld else payload

    # -- retries and status -----------------------------------------------------------------------

    def _with_retries(
        self, operation: str, attempt: Callable[[float], bytes | None]
    ) -> bytes | None:
        """Run `attempt(seconds_left)` until it succeeds, fails for good, or time runs out."""
        started_wall, started = time.time(), time.monotonic()
        give_up = self._retry.give_up_after_s
        code, detail, number = grpc.StatusCode.DEADLINE_EXCEEDED, "no time left", 0
        for number in range(1, self._retry.max_attempts + 1):
            self._add("attempts", 1)
            try:
                result = attempt(give_up - (time.monotonic() - started))
            except grpc.RpcError as err:
                code, detail = err.code(), err.details() or ""
                if code not in RETRYABLE:
                    self._failed(error_for_status(self.peer, code, detail))
                delay = self._retry.backoff(number, self._rng)
                log.info(
                    "%s -> %s %s attempt %d failed (%s: %s); retry in %.2fs",
                    self.name, self.peer, operation, number, code.name, detail, delay,
                )  # fmt: skip
                out_of_time = time.monotonic() - started + delay >= give_up
                if number == self._retry.max_attempts or out_of_time:
                    break
                if self._closed.wait(delay):
                    break
                continue
            except TransportError as exc:
                self._failed(exc)
            self._succeeded(started_wall, time.monotonic() - started)
            return result
        self._failed(PeerUnavailable(self.peer, code, f"gave up after {number} attempts: {detail}"))

    def _add(self, counter: str, amount: int, **changes: object) -> None:
        with self._state_lock:
            total = getattr(self._status, counter) + amount
            self._status = replace(self._status, **{counter: total}, **changes)

    def _succeeded(self, started_wall: float, seconds: float) -> None:
        with self._state_lock:
            self._not_before = 0.0
            self._status = replace(
                self._status,
                consecutive_failures=0,
                next_attempt_at=None,
                last_success_at=started_wall + seconds,
                last_error=None,
                total_successes=self._status.total_successes + 1,
                last_duration_s=seconds,
            )

    def _failed(self, error: TransportError) -> NoReturn:
        """Record the failure, set when the next call is worth making, and raise `error`."""
        with self._state_lock:
            failures = self._status.consecutive_failures + 1
            wait = self._retry.backoff(failures + 1, self._rng)
            self._not_before = time.monotonic() + wait
            self._status = replace(
                self._status,
                consecutive_failures=failures,
                next_attempt_at=time.time() + wait,
                last_error=str(error),
                total_failures=self._status.total_failures + 1,
            )
        log.warning("%s -> %s failed (%d in a row): %s", self.name, self.peer, failures, error)
        raise error
