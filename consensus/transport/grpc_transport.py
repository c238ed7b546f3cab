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
from consensus.transport.identity import IdentityError, PeerVerifier
from consensus.transport.revocation import RevocationList, RevocationListError
from consensus.transport.tls import TlsConfigError, TlsMaterial, load_tls
from consensus.transport.worker import ExchangeWorker

__all__ = [
    "BadReply",
    "ExchangeServer",
    "ExchangeWorker",
    "FramingError",
    "IdentityError",
    "ModelWithheld",
    "NodeNotReady",
    "PeerClient",
    "PeerRefused",
    "PeerStatus",
    "PeerUnavailable",
    "PeerVerifier",
    "RejectedByPeer",
    "RetryPolicy",
    "RevocationList",
    "RevocationListError",
    "SwapHandler",
    "TlsConfigError",
    "TlsMaterial",
    "TransportConfig",
    "TransportError",
    "edge_name",
    "load_tls",
]
