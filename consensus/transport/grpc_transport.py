"""gRPC + mutual-TLS transport between hospital nodes: the public names, in one import."""

from consensus.transport.framing import FramingError, edge_name
from consensus.transport.grpc_client import PeerClient, PeerStatus
from consensus.transport.grpc_common import (
    BadReply,
    ModelWithheld,
    NodeNotReady,
    PeerRefused,
    PeerUnavailable,
    RejectedByPeer,
    RetryPolicy,
    SwapHandler,
    TransportConfig,
    TransportError,
)
from consensus.transport.grpc_server import ExchangeServer
from consensus.transport.tls import TlsConfigError, TlsMaterial, load_tls
from consensus.transport.worker import ExchangeWorker

__all__ = [
    "BadReply",
    "ExchangeServer",
    "ExchangeWorker",
    "FramingError",
    "ModelWithheld",
    "NodeNotReady",
    "PeerClient",
    "PeerRefused",
    "PeerStatus",
    "PeerUnavailable",
    "RejectedByPeer",
    "RetryPolicy",
    "SwapHandler",
    "TlsConfigError",
    "TlsMaterial",
    "TransportConfig",
    "TransportError",
    "edge_name",
    "load_tls",
]
