"""gRPC server side of the consensus exchange: mutual TLS, neighbour checks, chunked swaps."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from consensus.transport import exchange_pb2 as pb
from consensus.transport import exchange_pb2_grpc as pb_grpc
from consensus.transport.framing import (
    Announcement,
    FramingError,
    check_nonce,
    check_protocol_version,
    edge_name,
    frames,
    proof_frame,
    read_announcement,
    read_payload,
)
from consensus.transport.grpc_common import (
    SERVICE_NAME,
    MetricsHandler,
    SwapHandler,
    TransportConfig,
)
from consensus.transport.identity import IdentityError, PeerVerifier, ProofSigner, common_name
from consensus.transport.server_checks import Refusals, Stats
from consensus.transport.tls import TlsMaterial, peer_certificate, server_credentials
from consensus.transport.watchdog import CallWatch, CallWatchdog

log = logging.getLogger(__name__)


class _ExchangeServicer(pb_grpc.ConsensusExchangeServicer):
    """Implements Swap and FetchModel: identity and neighbour checks on every call, one call per
    neighbour at a time, a watchdog on quiet or overlong calls."""

    def __init__(
        self,
        *,
        name: str,
        neighbours: Iterable[str],
        handler: SwapHandler,
        config: TransportConfig,
        verifier: PeerVerifier,
        signer: ProofSigner,
        metrics: MetricsHandler | None = None,
    ) -> None:
        self._name = name
        self._metrics = metrics
        self._neighbours = frozenset(neighbours)
        self._handler = handler
        self._config = config
        self._verifier = verifier
        self._signer = signer
        self.stats = Stats()
        self._checks = Refusals(name, config, self.stats)
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self.watchdog = CallWatchdog(name=name, on_expire=self._expired)

    # -- per-call checks ------------------------------------------------------------------------

    def _authorise(self, context: grpc.ServicerContext) -> str:
        """The caller's certificate CN, if it names one of this node's neighbours and its
        certificate still passes the per-call checks (validity dates, revocation list): a
        connection opened before a revocation is refused from its next call on."""
        refuse = self._checks.refuse
        cert = peer_certificate(context)
        if cert is None:
            refuse(context, grpc.StatusCode.UNAUTHENTICATED, "no_certificate", "?", "no cert")
        peer = common_name(cert)
        try:
            self._verifier.check(cert)
        except IdentityError as exc:
            refuse(context, grpc.StatusCode.PERMISSION_DENIED, exc.reason, peer, exc.detail)
        if peer not in self._neighbours:
            refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "not_a_neighbour",
                peer,
                f"{peer!r} is not a neighbour of {self._name!r} in this node's configuration",
            )
        return peer

    def _watch(self, context: grpc.ServicerContext, peer: str) -> CallWatch:
        """Cancel the call if the caller goes quiet or the call runs past the limit."""
        config = self._config
        return self.watchdog.watch(
            context, peer, idle_s=config.idle_timeout_s, limit_s=config.call_limit_s
        )

    def _expired(self, watch: CallWatch) -> None:
        self.stats.add(f"refused.{watch.expired}")
        log.warning("%s: cancelled the call from %s: %s (idle %.1f s, call %.1f s allowed)",
                    self._name, watch.peer, watch.expired, self._config.idle_timeout_s,
                    self._config.call_limit_s)  # fmt: skip

    @contextlib.contextmanager
    def _one_call_per_peer(
        self, context: grpc.ServicerContext, peer: str, kind: str = "exchange"
    ) -> Iterator[None]:
        """One call of each kind per neighbour at a time (metrics never block a swap)."""
        slot = f"{kind}:{peer}"
        with self._busy_lock:
            busy = slot in self._busy
            self._busy.add(slot)
        if busy:
            self._checks.refuse(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", peer, "a call is in progress"
            )
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy.discard(slot)

    # -- the steps of a swap ---------------------------------------------------------------------

    def _proof(self, peer: str, nonce: bytes, purpose: int) -> pb.Chunk:
        signature = self._signer.sign(callee=self._name, caller=peer, purpose=purpose, nonce=nonce)
        return proof_frame(self._signer.certificate_der, signature)

    def _frames(self, peer: str, payload: bytes | None, purpose: int) -> Iterator[pb.Chunk]:
        yield from frames(
            payload,
            sender=self._name,
            edge=edge_name(peer, self._name),
            method=self._config.method,
            purpose=purpose,
            chunk_size=self._config.chunk_size,
        )
        self.stats.add("bytes_sent", len(payload or b""))

    def _receive(
        self,
        context: grpc.ServicerContext,
        peer: str,
        watch: CallWatch,
        requests: Iterator[pb.Chunk],
        purpose: int = pb.PURPOSE_SWAP,
    ) -> Iterator[pb.Chunk | tuple[Announcement, bytes]]:
        """Yield our identity proof once the header is checked, then (announcement, payload)
        when the caller's message is complete; nothing more for a call that broke off."""
        config = self._config
        limit = config.max_metrics_bytes if purpose == pb.PURPOSE_METRICS else None
        try:
            announcement = read_announcement(
                requests, max_bytes=limit or config.max_payload_bytes, request=True
            )
            self._checks.check_announcement(context, peer, announcement, purpose)
            yield self._proof(peer, announcement.nonce, purpose)
            payload = read_payload(requests, announcement)
        except FramingError as exc:
            if watch.expired:  # our watchdog cut the stream short: counted there
                return
            self._checks.refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, peer, exc.detail
            )
        except grpc.RpcError:  # cancelled: by the caller, its deadline or our watchdog
            self.stats.add("aborted_in_transfer")
            log.info("%s: swap from %s ended mid-transfer; nothing applied", self._name, peer)
            return
        yield announcement, payload

    def _answer(
        self, context: grpc.ServicerContext, peer: str, announcement: Announcement, payload: bytes
    ) -> bytes | None:
        """Validate the caller's message, then take ours and queue theirs: nothing is taken,
        counted or confirmed for a message the gate refuses (SwapHandler)."""
        call = self._checks.call_handler
        if announcement.withheld:
            outgoing = call(context, peer, self._handler.outgoing_for)
            call(context, peer, self._handler.on_withheld)
            self.stats.add("withheld_received")
            return outgoing
        validated = call(context, peer, self._handler.validate, payload)
        outgoing = call(context, peer, self._handler.outgoing_for)
        call(context, peer, self._handler.deliver, validated, len(payload))
        self.stats.add("bytes_received", len(payload))
        self.stats.add("swaps_applied")
        return outgoing

    # -- RPCs -----------------------------------------------------------------------------------

    def Swap(  # noqa: N802 (name fixed by the generated base class)
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        """Receive and validate the caller's message, then answer with ours.

        Frames out: our identity proof (as soon as the header is checked, so the caller can
        check us before sending data), then our message. Either direction may be withheld
        (privacy budget spent): a withheld request goes to `on_withheld`, a None from
        `outgoing_for` is answered as a withheld reply; the other direction still goes through.
        """
        peer = self._authorise(context)
        watch = self._watch(context, peer)
        with self._one_call_per_peer(context, peer):
            received = None
            for item in self._receive(context, peer, watch, watch.touching(request_iterator)):
                if isinstance(item, pb.Chunk):
                    yield item
                else:
                    received = item
            if received is None:
                return
            watch.request_done()
            outgoing = self._answer(context, peer, *received)
            if outgoing is None:
                self.stats.add("withheld_sent")
            yield from self._frames(peer, outgoing, pb.PURPOSE_SWAP)
            if outgoing is not None:  # the whole reply went out: now it counts as sent
                self._checks.call_handler(context, peer, self._handler.on_sent, len(outgoing))
            self.stats.add("swaps_answered")

    def FetchModel(  # noqa: N802
        self, request: pb.ModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        """Stream this node's current model to a neighbour that asks for it."""
        peer = self._authorise(context)
        if request.sender != peer:
            self._checks.refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "sender_mismatch",
                peer,
                f"request names sender {request.sender!r}, certificate CN is {peer!r}",
            )
        try:
            check_protocol_version(request.protocol_version)
            check_nonce(request.nonce)
        except FramingError as exc:
            self._checks.refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, peer, exc.detail
            )
        self._checks.check_method(context, peer, request.method)
        self._watch(context, peer).request_done()
        with self._one_call_per_peer(context, peer):
            yield self._proof(peer, request.nonce, pb.PURPOSE_MODEL)
            model = self._checks.call_handler(context, peer, self._handler.model_for)
            yield from self._frames(peer, model, pb.PURPOSE_MODEL)
            self.stats.add("models_served")

    def ShareMetrics(  # noqa: N802
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        """Take a neighbour's metrics message, answer with ours; refused (`metrics_off`, before
        our proof, so the caller sends no data) unless this node shares metrics."""
        peer = self._authorise(context)
        if self._metrics is None:
            detail = f"{self._name} does not share metrics ([metrics] share)"
            refused = grpc.StatusCode.FAILED_PRECONDITION
            self._checks.refuse(context, refused, "metrics_off", peer, detail)
        watch = self._watch(context, peer)
        with self._one_call_per_peer(context, peer, "metrics"):
            received = None
            requests = watch.touching(request_iterator)
            for item in self._receive(context, peer, watch, requests, pb.PURPOSE_METRICS):
                if isinstance(item, pb.Chunk):
                    yield item
                else:
                    received = item
            if received is None:
                return
            watch.request_done()
            call = self._checks.call_handler
            call(context, peer, self._metrics.accept_metrics, received[1])
            yield from self._frames(peer, call(context, peer, self._metrics.metrics_for),
                                    pb.PURPOSE_METRICS)  # fmt: skip
            self.stats.add("metrics_answered")


class ExchangeServer:
    """One node's gRPC endpoint: the exchange service plus grpc.health.v1, over mutual TLS.

    `verifier` checks callers' certificates on every call (validity dates; the revocation list
    when it has one); by default the CA of `tls` without a revocation list. `metrics`: the
    node's metrics handler when it shares metrics; None refuses every ShareMetrics call.
    """

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
        verifier: PeerVerifier | None = None,
        metrics: MetricsHandler | None = None,
    ) -> None:
        if tls.name != name:
            raise ValueError(
                f"certificate is for {tls.name!r}, not {name!r}: use this node's bundle"
            )
        self.name = name
        self._config = config or TransportConfig()
        self._servicer = _ExchangeServicer(
            name=name,
            neighbours=neighbours,
            handler=handler,
            config=self._config,
            verifier=verifier or PeerVerifier.from_pem(tls.ca_cert),
            signer=ProofSigner.from_pem(tls.cert, tls.key),
            metrics=metrics,
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
        self._servicer.watchdog.stop()
        log.info("%s: exchange server stopped", self.name)

    def stats(self) -> dict[str, int]:
        """Counters: swaps_applied, swaps_answered, models_served, bytes_*, withheld_received
        (the caller's budget is spent), withheld_sent (ours is), refused.<reason> (idle_timeout
        and call_timeout: calls the watchdog cancelled)."""
        return self._servicer.stats.snapshot()
