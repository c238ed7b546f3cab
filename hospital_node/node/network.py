"""The node's network side: its gRPC server, its swap worker and the late-join model fetch."""

from __future__ import annotations

import logging
import random
import threading
import time

from cryptography import x509
from torch import Tensor

from consensus.transport.grpc_transport import (
    ExchangeServer,
    ExchangeWorker,
    IdentityError,
    PeerClient,
    PeerVerifier,
    RejectedByPeer,
    RetryPolicy,
    RevocationList,
    RevocationListError,
    TlsConfigError,
    TlsMaterial,
    TransportConfig,
    TransportError,
)
from consensus.transport.identity import ProofSigner
from consensus.wire import MessageRejected
from hospital_node.node.config import NodeConfig, PeerSpec
from hospital_node.node.handler import NodeHandler
from hospital_node.node.metrics_share import MetricsSharer, MetricsWorker, SummarySink

log = logging.getLogger(__name__)


CRL_FILE = "crl.pem"  # the network's revocation list, beside the bundle's ca.crt


def transport_config(config: NodeConfig, handler: NodeHandler) -> TransportConfig:
    """Sizes and timeouts: the payload limit is the largest valid message of this node's model
    (consensus.wire.message_size_limit), so anything bigger is refused on its header."""
    exchange = config.exchange
    return TransportConfig(
        method=config.consensus.method,
        max_payload_bytes=handler.max_message_bytes,
        base_deadline_s=exchange.base_deadline_s,
        max_reconnect_backoff_s=exchange.reconnect_backoff_max_s,
        idle_timeout_s=exchange.idle_timeout_s,
        call_timeout_s=exchange.call_timeout_s or None,
    )


def peer_verifier(config: NodeConfig, tls: TlsMaterial) -> PeerVerifier:
    """Per-call certificate checks with the network's CRL (re-read whenever the file changes);
    refuses to go on when this node's own certificate is revoked or out of its dates."""
    path = config.paths.ca_cert.with_name(CRL_FILE)
    verifier = PeerVerifier.from_pem(tls.ca_cert)
    try:
        verifier = PeerVerifier(ca=verifier.ca, revocation=RevocationList(path, ca=verifier.ca))
        verifier.check(x509.load_pem_x509_certificate(tls.cert), name=config.name)
    except RevocationListError as exc:
        raise TlsConfigError(f"{exc}; put the coordinator's current crl.pem there") from exc
    except IdentityError as exc:
        raise TlsConfigError(
            f"this node's certificate {config.paths.cert}: {exc}; ask the coordinator for a "
            "renewed bundle (hospital-node renew)"
        ) from exc
    return verifier


def start_server(
    config: NodeConfig,
    tls: TlsMaterial,
    handler: NodeHandler,
    metrics: MetricsSharer | None = None,
) -> ExchangeServer:
    """Listen on the node's port; health NOT_SERVING until the caller says the model is final.
    `metrics`: the node's sharer when [metrics] share is on (else ShareMetrics is refused)."""
    server = ExchangeServer(
        name=config.name,
        neighbours=config.peer_names,
        handler=handler,
        tls=tls,
        host=config.listen.host,
        port=config.listen.port,
        config=transport_config(config, handler),
        verifier=peer_verifier(config, tls),
        metrics=metrics,
    )
    server.start()
    server.set_serving(False)
    return server


def peer_client(
    config: NodeConfig,
    tls: TlsMaterial,
    peer: PeerSpec,
    retry: RetryPolicy,
    handler: NodeHandler,
    verifier: PeerVerifier,
) -> PeerClient:
    rng = random.Random(f"{config.training.seed}:{config.name}:{peer.name}")
    return PeerClient(
        name=config.name,
        peer=peer.name,
        address=peer.address,
        tls=tls,
        rng=rng,
        config=transport_config(config, handler),
        retry=retry,
        verifier=verifier,
    )


def start_worker(
    config: NodeConfig, tls: TlsMaterial, handler: NodeHandler
) -> ExchangeWorker | None:
    """Swaps at random times with the peers this node initiates with (None: it initiates none)."""
    exchange = config.exchange
    retry = RetryPolicy(
        max_attempts=exchange.retry_max_attempts,
        initial_backoff_s=exchange.retry_initial_backoff_s,
        max_backoff_s=exchange.retry_max_backoff_s,
        give_up_after_s=exchange.retry_give_up_after_s,
    )
    peers = [p for p in config.peers if config.initiates_with(p.name)]
    if not peers:
        log.info("%s: every neighbour sorts before this node, so they start the swaps "
                 "(initiate = 'lower'); this node answers them", config.name)  # fmt: skip
        return None
    verifier = peer_verifier(config, tls)
    worker = ExchangeWorker(
        handler=handler,
        clients=[peer_client(config, tls, p, retry, handler, verifier) for p in peers],
        mean_interval_s=exchange.mean_interval_s,
        rng=random.Random(f"{config.training.seed}:{config.name}:schedule"),
        max_parallel=exchange.max_parallel,
    )
    worker.start()
    return worker


def fetch_neighbour_model(
    config: NodeConfig, tls: TlsMaterial, handler: NodeHandler, stop: threading.Event
) -> tuple[str, dict[str, Tensor]] | None:
    """(peer, parameters) of the first neighbour whose model arrives and validates, asking
    each in turn until `join_timeout_s` passes or `stop` is set; None if none did. A neighbour
    that refuses for good (RejectedByPeer, e.g. `model_withheld` under exchange privacy) is
    not asked again."""
    timeout = config.exchange.join_timeout_s
    once = RetryPolicy(max_attempts=1, give_up_after_s=max(timeout, 1.0))
    verifier = peer_verifier(config, tls)
    clients = [peer_client(config, tls, p, once, handler, verifier) for p in config.peers]
    deadline = time.monotonic() + timeout
    try:
        asking = list(clients)
        while asking and time.monotonic() < deadline and not stop.is_set():
            for client in list(asking):
                try:
                    return client.peer, handler.accept_model(client.peer, client.fetch_model())
                except RejectedByPeer as exc:
                    log.info("%s: %s does not send its model (%s)", config.name, client.peer, exc)
                    asking.remove(client)
                except (TransportError, MessageRejected) as exc:
                    log.info("%s: no model from %s yet (%s)", config.name, client.peer, exc)
            stop.wait(1.0)
    finally:
        for client in clients:
            client.close()
    log.warning("%s: no neighbour sent its model within %.0f s; starting from scratch",
                config.name, timeout)  # fmt: skip
    return None


def build_sharer(
    config: NodeConfig, tls: TlsMaterial, boot_epoch: int, sink: SummarySink
) -> MetricsSharer | None:
    """The node's metrics sharer when node.toml says `[metrics] share = true`, else None."""
    if not config.metrics.share:
        return None
    return MetricsSharer(
        name=config.name,
        peers=config.peer_names,
        signer=ProofSigner.from_pem(tls.cert, tls.key),
        verifier=peer_verifier(config, tls),
        boot_epoch=boot_epoch,
        sink=sink,
    )


def start_metrics_worker(
    config: NodeConfig, tls: TlsMaterial, handler: NodeHandler, sharer: MetricsSharer | None
) -> MetricsWorker | None:
    """Metric exchanges with the neighbours this node initiates with (the other end answers)."""
    peers = [p for p in config.peers if config.initiates_with(p.name)]
    if sharer is None or not peers:
        return None
    retry = RetryPolicy(max_attempts=2, max_backoff_s=5.0, give_up_after_s=30.0)
    verifier = peer_verifier(config, tls)
    worker = MetricsWorker(
        sharer=sharer,
        clients={p.name: peer_client(config, tls, p, retry, handler, verifier) for p in peers},
        interval_s=config.metrics.interval_s,
        rng=random.Random(f"{config.training.seed}:{config.name}:metrics"),
    )
    worker.start()
    return worker
