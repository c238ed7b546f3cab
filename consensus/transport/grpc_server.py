"""gRPC server side of the consensus exchange: mutual TLS, neighbour checks, chunked swaps."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from consensus.transport import exchange_pb2 as pb
from consensus.transport import exchange_pb2_grpc as pb_grpc
from consensus.transport.framing import (
    Announcement,
    FramingError,
    edge_name,
    frames,
    read_announcement,
    read_payload,
)
from consensus.transport.grpc_common import (
    SERVICE_NAME,
    ModelWithheld,
    NodeNotReady,
    SwapHandler,
    TransportConfig,
)
from consensus.transport.tls import TlsMaterial, peer_common_name, server_credentials
from consensus.wire import MessageRejected

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Stats:
    """Thread-safe counters: swaps, bytes, and refusals by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class _ExchangeServicer(pb_grpc.ConsensusExchangeServicer):
    """Implements Swap and FetchModel; every refusal is logged, counted and mapped to a status."""

    def __init__(
        self, *, name: str, neighbours: Iterable[str], handler: SwapHandler, config: TransportConfig
    ) -> None:
        self._name = name
        self._neighbours = frozenset(neighbours)
        self._handler = handler
        self._config = config
        self.stats = _Stats()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    # -- refusals -----------------------------------------------------------------------------

    def _refuse(
        self,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        reason: str,
        peer: str,
        detail: str,
    ) -> NoReturn:
        self.stats.add(f"refused.{reason}")
        log.warning("%s: refused call from %s: %s (%s)", self._name, peer, reason, detail)
        context.abort(code, f"{reason}: {detail}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _authorise(self, context: grpc.ServicerContext) -> str:
        """The caller's certificate CN, if it names one of this node's neighbours."""
        peer = peer_common_name(context)
        if peer is None:
            self._refuse(
                context, grpc.StatusCode.UNAUTHENTICATED, "no_certificate", "?", "no client cert"
            )
        if peer not in self._neighbours:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "not_a_neighbour",
                peer,
                f"{peer!r} is not a neighbour of {self._name!r} in this node's configuration",
            )
        self._watchdog(context)
        return peer

    def _watchdog(self, context: grpc.ServicerContext) -> None:
        """Cancel calls that came without a deadline (or a very long one) after the server limit."""
        limit = self._config.server_call_limit_s
        remaining = context.time_remaining()
        if remaining is not None and remaining <= limit:
            return
        timer = threading.Timer(limit, context.cancel)
        timer.daemon = True
        timer.start()
        context.add_callback(timer.cancel)

    @contextlib.contextmanager
    def _one_call_per_peer(self, context: grpc.ServicerContext, peer: str) -> Iterator[None]:
        with self._busy_lock:
            busy = peer in self._busy
            self._busy.add(peer)
        if busy:
            self._refuse(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", peer, "a call is in progress"
            )
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy.discard(peer)

    def _check_announcement(
        self, context: grpc.ServicerContext, peer: str, announcement: Announcement, purpose: int
    ) -> None:
        if announcement.sender != peer:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "sender_mismatch",
                peer,
                f"header names sender {announcement.sender!r}, certificate CN is {peer!r}",
            )
        expected_edge = edge_name(peer, self._name)
        if announcement.purpose != purpose or announcement.edge != expected_edge:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_header",
                peer,
                f"expected purpose {purpose} on edge {expected_edge!r}, got "
                f"{announcement.purpose} on {announcement.edge!r}",
            )
        self._check_method(context, peer, announcement.method)

    def _check_method(self, context: grpc.ServicerContext, peer: str, method: str) -> None:
        mine = self._config.method
        if mine and method and method != mine:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "method_mismatch",
                peer,
                f"peer runs {method!r}, this node {mine!r}; use one algorithm network-wide",
            )

    def _call_handler(
        self, context: grpc.ServicerContext, peer: str, call: Callable[..., T], *args: object
    ) -> T:
        """Run a handler method; map refusals to statuses without leaking internal errors."""
        try:
            return call(peer, *args)
        except MessageRejected as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, peer, exc.detail)
        except NodeNotReady as exc:
            self._refuse(context, grpc.StatusCode.UNAVAILABLE, "not_ready", peer, str(exc))
        except ModelWithheld as exc:
            self._refuse(
                context, grpc.StatusCode.FAILED_PRECONDITION, "model_withheld", peer, str(exc)
            )
        except Exception:
            log.exception("%s: handler failed on a call from %s", self._name, peer)
            self.stats.add("refused.handler_error")
            context.abort(grpc.StatusCode.INTERNAL, f"{self._name} failed; see its log")
            raise  # pragma: no cover (abort raises)

    def _frames(self, peer: str, payload: bytes | None, purpose: int) -> Iterator[pb.Chunk]:
        self.stats.add("bytes_sent", len(payload or b""))
        yield from frames(
            payload,
            sender=self._name,
            edge=edge_name(peer, self._name),
            method=self._config.method,
            purpose=purpose,
            chunk_size=self._config.chunk_size,
        )

    # -- RPCs -----------------------------------------------------------------------------------

    def Swap(  # noqa: N802 (name fixed by the generated base class)
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        """Receive the caller's message, apply it only once complete and verified, answer ours.

        Our outgoing message is taken before the incoming one is applied, so both sides send
        the state they had before the swap (as the in-memory transport does). Either direction
        may be withheld (privacy budget spent): a withheld request goes to `on_withheld`, and a
        None from `outgoing_for` is answered as a withheld reply; the other direction still
        goes through.
        """
        peer = self._authorise(context)
        with self._one_call_per_peer(context, peer):
            try:
                announcement = read_announcement(
                    request_iterator, max_bytes=self._config.max_payload_bytes
                )
                self._check_announcement(context, peer, announcement, pb.PURPOSE_SWAP)
                outgoing = self._call_handler(context, peer, self._handler.outgoing_for)
                payload = read_payload(request_iterator, announcement)
            except FramingError as exc:
                self._refuse(
                    context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, peer, exc.detail
                )
            except grpc.RpcError:  # the caller cancelled or its deadline passed mid-transfer
                self.stats.add("aborted_in_transfer")
                log.info("%s: swap from %s ended mid-transfer; nothing applied", self._name, peer)
                return
            if announcement.withheld:
                self._call_handler(context, peer, self._handler.on_withheld)
                self.stats.add("withheld_received")
            else:
                self.stats.add("bytes_received", len(payload))
                self._call_handler(context, peer, self._handler.on_received, payload)
                self.stats.add("swaps_applied")
            if outgoing is None:
                self.stats.add("withheld_sent")
            yield from self._frames(peer, outgoing, pb.PURPOSE_SWAP)
            self.stats.add("swaps_answered")

    def FetchModel(  # noqa: N802
        self, request: pb.ModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        """Stream this node's current model to a neighbour that asks for it."""
        peer = self._authorise(context)
        if request.sender != peer:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "sender_mismatch",
                peer,
                f"request names sender {request.sender!r}, certificate CN is {peer!r}",
            )
        self._check_method(context, peer, request.method)
        with self._one_call_per_peer(context, peer):
            model = self._call_handler(context, peer, self._handler.model_for)
            yield from self._frames(peer, model, pb.PURPOSE_MODEL)
            self.stats.add("models_served")


class ExchangeServer:
    """One node's gRPC endpoint: the exchange service plus grpc.health.v1, over mutual TLS."""

    def __init__(
        self,
        *,
        name: str,
        neighbours: Iterable[str],
        handler: SwapHandler,
        tls: TlsMaterial,
        host: str = "127.0.0.1",
        port: int = 0,
        config: TransportConfig | None = None,
    ) -> None:
        if tls.name != name:
            raise ValueError(
                f"certificate is for {tls.name!r}, not {name!r}: use this node's bundle"
            )
        self.name = name
        self._config = config or TransportConfig()
        self._servicer = _ExchangeServicer(
            name=name, neighbours=neighbours, handler=handler, config=self._config
        )
        self._health = health.HealthServicer()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self._config.server_threads, thread_name_prefix=f"grpc-{name}"
            ),
            options=self._config.server_options(),
            maximum_concurrent_rpcs=self._config.max_concurrent_calls,
        )
        pb_grpc.add_ConsensusExchangeServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._address = f"{host}:{port}"
        self._credentials = server_credentials(tls)
        self.port: int | None = None

    def start(self) -> int:
        """Bind, start serving and report SERVING; returns the bound port (useful with port 0)."""
        try:
            self.port = self._server.add_secure_port(self._address, self._credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self._address} (port in use?): {exc}") from exc
        self._server.start()
        self.set_serving(True)
        log.info("%s: serving consensus exchange on %s (mutual TLS)", self.name, self._address)
        return self.port

    def set_serving(self, serving: bool) -> None:
        """What grpc.health.v1 reports, e.g. NOT_SERVING while the node restores a checkpoint."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self._health.set(service, status)

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, let calls in flight finish for `grace` seconds, then close."""
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        log.info("%s: exchange server stopped", self.name)

    def stats(self) -> dict[str, int]:
        """Counters: swaps_applied, swaps_answered, models_served, bytes_*, withheld_received
        (the caller's budget is spent), withheld_sent (ours is), refused.<reason>."""
        return self._servicer.stats.snapshot()
