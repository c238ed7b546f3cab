"""consensus package."""

from consensus.algorithms import (
    SERVER,
    Algorithm,
    EdgeConsensus,
    FedAvgClient,
    FedAvgServer,
    GossipSGD,
    LocalSGD,
    UnknownPeerError,
    make_algorithm,
)
from consensus.config import METHODS, ConsensusConfig, ConsensusConfigError
from consensus.exchange_schedule import Event, ExchangeSchedule, Round, Step, Swap
from consensus.lr_schedule import learning_rate_at, step_weights
from consensus.optimizer import ConsensusOptimizer
from consensus.topology import (
    Topology,
    TopologyError,
    from_edges,
    full,
    node_names,
    random_regular,
    ring,
)

__all__ = [
    "METHODS",
    "SERVER",
    "Algorithm",
    "ConsensusConfig",
    "ConsensusConfigError",
    "ConsensusOptimizer",
    "EdgeConsensus",
    "Event",
    "ExchangeSchedule",
    "FedAvgClient",
    "FedAvgServer",
    "GossipSGD",
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
