"""The node's network side: its gRPC server, its swap worker and the late-join model fetch."""

from __future__ import annotations

import logging
import random
import threading
import time

from torch import Tensor

from consensus.transport.grpc_transport import (
    ExchangeServer,
    ExchangeWorker,
    PeerClient,
    RejectedByPeer,
    RetryPolicy,
    TlsMaterial,
    TransportConfig,
    TransportError,
)
from consensus.wire import MessageRejected
from hospital_node.node_config import NodeConfig, PeerSpec
from hospital_node.node_handler import NodeHandler

log = logging.getLogger(__name__)


def transport_config(config: NodeConfig) -> TransportConfig:
    exchange = config.exchange
    return TransportConfig(
        method=config.consensus.method,
        base_deadline_s=exchange.base_deadline_s,
        max_reconnect_backoff_s=exchange.reconnect_backoff_max_s,
    )


def start_server(config: NodeConfig, tls: TlsMaterial, handler: NodeHandler) -> ExchangeServer:
    """Listen on the node's port; health NOT_SERVING until the caller says the model is final."""
    server = ExchangeServer(
        name=config.name,
        neighbours=config.peer_names,
        handler=handler,
        tls=tls,
        host=config.listen.host,
        port=config.listen.port,
        config=transport_config(config),
    )
    server.start()
    server.set_serving(False)
    return server


def peer_client(
    config: NodeConfig, tls: TlsMaterial, peer: PeerSpec, retry: RetryPolicy
) -> PeerClient:
    rng = random.Random(f"{config.training.seed}:{config.name}:{peer.name}")
    return PeerClient(
        name=config.name,
        peer=peer.name,
        address=peer.address,
        tls=tls,
        rng=rng,
        config=transport_config(config),
        retry=retry,
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
    worker = ExchangeWorker(
        handler=handler,
        clients=[peer_client(config, tls, p, retry) for p in peers],
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
    clients = [peer_client(config, tls, p, once) for p in config.peers]
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
