"""consensus package: the math, the wire format and the transports of edge-consensus learning.

The names below are imported on first use (PEP 562), so that importing a light submodule
(consensus.config, consensus.privacy_config, consensus.transport.tls) does not import torch:
`hospital-node status` and the app start in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SERVER": "consensus.algorithms",
    "Algorithm": "consensus.algorithms",
    "EdgeConsensus": "consensus.algorithms",
    "EdgeConsensusISVR": "consensus.algorithms",
    "FedAvgClient": "consensus.algorithms",
    "FedAvgServer": "consensus.algorithms",
    "GossipSGD": "consensus.algorithms",
    "GradientTracking": "consensus.algorithms",
    "LocalSGD": "consensus.algorithms",
    "UnknownPeerError": "consensus.algorithms",
    "make_algorithm": "consensus.algorithms",
    "METHODS": "consensus.config",
    "ConsensusConfig": "consensus.config",
    "ConsensusConfigError": "consensus.config",
    "Event": "consensus.exchange_schedule",
    "ExchangeSchedule": "consensus.exchange_schedule",
    "Round": "consensus.exchange_schedule",
    "Step": "consensus.exchange_schedule",
    "Swap": "consensus.exchange_schedule",
    "learning_rate_at": "consensus.lr_schedule",
    "step_weights": "consensus.lr_schedule",
    "Topology": "consensus.topology",
    "TopologyError": "consensus.topology",
    "from_edges": "consensus.topology",
    "full": "consensus.topology",
    "node_names": "consensus.topology",
    "random_regular": "consensus.topology",
    "ring": "consensus.topology",
}

__all__ = [
    "METHODS",
    "SERVER",
    "Algorithm",
    "ConsensusConfig",
    "ConsensusConfigError",
    "EdgeConsensus",
    "EdgeConsensusISVR",
    "Event",
    "ExchangeSchedule",
    "FedAvgClient",
    "FedAvgServer",
    "GossipSGD",
    "GradientTracking",
    "LocalSGD",
    "Round",
    "Step",
    "Swap",
    "Topology",
    "TopologyError",
    "UnknownPeerError",
    "from_edges",
    "full",
    "learning_rate_at",
    "make_algorithm",
    "node_names",
    "random_regular",
    "ring",
    "step_weights",
]

if TYPE_CHECKING:
    from consensus.algorithms import (
        SERVER,
        Algorithm,
        EdgeConsensus,
        EdgeConsensusISVR,
        FedAvgClient,
        FedAvgServer,
        GossipSGD,
        GradientTracking,
        LocalSGD,
        UnknownPeerError,
        make_algorithm,
    )
    from consensus.config import METHODS, ConsensusConfig, ConsensusConfigError
    from consensus.exchange_schedule import Event, ExchangeSchedule, Round, Step, Swap
    from consensus.lr_schedule import learning_rate_at, step_weights
    from consensus.topology import (
        Topology,
        TopologyError,
        from_edges,
        full,
        node_names,
        random_regular,
        ring,
    )


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'consensus' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
