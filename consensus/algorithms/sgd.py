"""The SGD-based baselines: local only, gossip, FedAvg (client and server) (eqs. 11, 12, 24)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from consensus import kernels
from consensus.algorithms.base import SERVER, NodeAlgorithm, UnknownPeerError
from consensus.config import ConsensusConfig

if TYPE_CHECKING:  # a type only: importing it would load Opacus with every algorithm
    from consensus.private_exchange import ExchangePrivacy


class LocalSGD(NodeAlgorithm):
    """Local-only baseline: plain SGD, exchanges carry nothing (eq. 11 without averaging).

    With `momentum` > 0 the step follows the heavy ball (eq. 24); so do gossip and FedAvg.
    """

    methods = ("local",)

    def _message_template(self) -> dict[str, Tensor]:
        return {}

    def local_step(self, grads: Mapping[str, Tensor]) -> None:
        rate = self.learning_rate
        directions = self._directions(grads)
        with torch.no_grad():  # in place: views stay valid, leaf parameters need no_grad
            kernels.sgd_update_(
                self._aligned(self.params), self._aligned(directions), learning_rate=rate
            )
        self.step += 1

    def outgoing(self, peer: str) -> dict[str, Tensor]:
        self._check_peer(peer)
        return {}

    def incoming(self, peer: str, tensors: Mapping[str, Tensor]) -> None:
        self._check_message(peer, tensors)


class GossipSGD(LocalSGD):
    """Asynchronous gossip SGD (eq. 11): SGD steps, pairwise model averaging on a swap."""

    methods = ("gossip",)

    def _message_template(self) -> dict[str, Tensor]:
        return {f"w/{name}": w for name, w in self.params.items()}

    def outgoing(self, peer: str) -> dict[str, Tensor]:
        """The model (with exchange privacy: its release for `peer`)."""
        self._check_peer(peer)
        return self._model_message(peer)

    def incoming(self, peer: str, tensors: Mapping[str, Tensor]) -> None:
        self._check_message(peer, tensors)
        received = self._aligned(self._unpack(tensors, "w"))
        with torch.no_grad():
            kernels.pairwise_average_(self._aligned(self.params), received)


class FedAvgClient(GossipSGD):
    """FedAvg / co-learning client (eq. 12): SGD steps; a round sets w to the server average.

    The momentum buffer (if any) stays with the client across rounds (local momentum).
    """

    methods = ("fedavg",)

    def __init__(
        self,
        *,
        config: ConsensusConfig,
        node: str,
        params: Mapping[str, Tensor],
        num_samples: int,
        privacy: ExchangePrivacy | None = None,
    ) -> None:
        super().__init__(config=config, node=node, peers=(SERVER,), params=params, privacy=privacy)
        if num_samples < 1:
            raise ValueError("FedAvg weights clients by their sample count: num_samples >= 1")
        self.num_samples = int(num_samples)

    def _message_template(self) -> dict[str, Tensor]:
        count = torch.tensor(self.num_samples, dtype=torch.int64)
        return {**{f"w/{name}": w for name, w in self.params.items()}, "num_samples": count}

    def outgoing(self, peer: str) -> dict[str, Tensor]:
        """The model (with exchange privacy: its release) and the sample count, in clear."""
        self._check_peer(peer)
        count = torch.tensor(self.num_samples, dtype=torch.int64)
        return {**self._model_message(peer), "num_samples": count}

    def incoming(self, peer: str, tensors: Mapping[str, Tensor]) -> None:
        self._check_message(peer, tensors)
        self._write(self._unpack(tensors, "w"))


class FedAvgServer:
    """The FedAvg server: a pure weighted average of the received client models (eq. 12)."""

    method = "fedavg"
    node = SERVER

    def __init__(self, *, clients: Sequence[str]) -> None:
        self.clients = tuple(clients)

    def aggregate(self, messages: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Average of the client messages {client: outgoing(SERVER)}, as a message to send back."""
        unknown = sorted(set(messages) - set(self.clients))
        if unknown or not messages:
            raise UnknownPeerError(f"server got {sorted(messages)}; clients are {self.clients}")
        senders = sorted(messages)
        counts = [int(messages[c]["num_samples"]) for c in senders]
        models = [{k: v for k, v in messages[c].items() if k != "num_samples"} for c in senders]
        average = kernels.weighted_average(models, counts)
        return {**average, "num_samples": torch.tensor(sum(counts), dtype=torch.int64)}
