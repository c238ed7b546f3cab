"""Node-level algorithm objects behind one interface: ECL-PDMM/ADMM, ECL-ISVR, gossip, gradient
tracking, FedAvg, local (docs/algorithm.md). One module per family; `make_algorithm` picks."""

from consensus.algorithms.base import SERVER, Algorithm, NodeAlgorithm, UnknownPeerError
from consensus.algorithms.ecl import EdgeConsensus, EdgeConsensusISVR
from consensus.algorithms.factory import make_algorithm
from consensus.algorithms.sgd import FedAvgClient, FedAvgServer, GossipSGD, LocalSGD
from consensus.algorithms.tracking import GradientTracking

__all__ = [
    "SERVER",
    "Algorithm",
    "EdgeConsensus",
    "EdgeConsensusISVR",
    "FedAvgClient",
    "FedAvgServer",
    "GossipSGD",
    "GradientTracking",
    "LocalSGD",
    "NodeAlgorithm",
    "UnknownPeerError",
    "make_algorithm",
]
