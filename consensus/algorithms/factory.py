"""make_algorithm: the algorithm object of a configured method for one node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from consensus.algorithms.base import Algorithm
from consensus.algorithms.ecl import EdgeConsensus, EdgeConsensusISVR
from consensus.algorithms.sgd import FedAvgClient, GossipSGD, LocalSGD
from consensus.algorithms.tracking import GradientTracking
from consensus.config import ConsensusConfig, ConsensusConfigError

if TYPE_CHECKING:  # a type only: importing it would load Opacus with every algorithm
    from consensus.private_exchange import ExchangePrivacy


def make_algorithm(
    config: ConsensusConfig,
    *,
    node: str,
    neighbours: Sequence[str],
    params: Mapping[str, Tensor],
    node_order: Sequence[str] | None = None,
    edge_weights: Mapping[str, float] | None = None,
    num_samples: int | None = None,
    privacy: ExchangePrivacy | None = None,
) -> Algorithm:
    """The algorithm object of `config.method` for one node.

    ECL and ECL-ISVR: `node_order` fixes the edge signs (eq. 3) and must be the same on
    every node (default: sorted names); `edge_weights` are the relative per-edge weights
    (eq. 6) and must be symmetric - pass `Topology.edge_weights(node)`; the default 1 / |N_i|
    is symmetric only on regular graphs (on others the fixed point is biased, sec. 6.1 and
    10.3). FedAvg: the only peer is "server" (`neighbours` is ignored) and `num_samples` is
    required. `privacy` (exchange mode, docs/privacy.md): every message carries a private
    release of the model instead of the model, and `outgoing` raises PrivacyBudgetExhausted
    once the budget is spent; its peers must be the node's (["server"] for FedAvg).
    Local-only sends nothing, so it takes no privacy object; gradient tracking refuses one
    (its tracker must travel exactly, sec. 10.5).
    """
    common = {"config": config, "node": node, "params": params}
    if config.method == "local" and privacy is not None:
        raise ValueError("local-only training sends nothing: it needs no exchange privacy")
    if config.method == "gradient-tracking" and privacy is not None:
        raise ConsensusConfigError(
            "gradient-tracking does not support exchange privacy (noise on its tracker is never "
            "taken out again); use gossip or an ECL method, or privacy mode 'dpsgd'"
        )
    if privacy is not None:
        common["privacy"] = privacy
    if config.method == "fedavg":
        if num_samples is None:
            raise ValueError("fedavg needs num_samples (the client's training-set size)")
        return FedAvgClient(num_samples=num_samples, **common)
    if node in neighbours or len(set(neighbours)) != len(neighbours):
        raise ValueError(f"neighbours of {node} must be distinct and exclude itself: {neighbours}")
    if config.method == "local":
        return LocalSGD(peers=neighbours, **common)
    if config.method == "gossip":
        return GossipSGD(peers=neighbours, **common)
    if config.method == "gradient-tracking":
        return GradientTracking(peers=neighbours, **common)
    order = list(node_order) if node_order is not None else sorted({node, *neighbours})
    if edge_weights is None:
        edge_weights = {peer: 1.0 / len(neighbours) for peer in neighbours}
    ecl = EdgeConsensusISVR if config.is_isvr else EdgeConsensus
    return ecl(peers=neighbours, node_order=order, edge_weights=edge_weights, **common)
