"""Asynchronous pairwise gradient tracking, with momentum tracking (docs/algorithm.md sec. 10.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from consensus import kernels
from consensus.algorithms.base import NodeAlgorithm, snapshot
from consensus.config import ConsensusConfig, ConsensusConfigError

if TYPE_CHECKING:  # a type only: importing it would load Opacus with every algorithm
    from consensus.private_exchange import ExchangePrivacy


def _zeros_like(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {
        name: torch.zeros_like(w, memory_format=torch.contiguous_format)
        for name, w in params.items()
    }


class GradientTracking(NodeAlgorithm):
    """DSGT (Pu & Nedic 2021) in pairwise asynchronous form, at one node (eqs. 25-27).

    The node keeps its model x (the live `params`), a tracker t of the network's mean step
    direction, the direction d_prev it last added to t, and per neighbour j the running
    totals of tracker mass given to j and taken from j. A local step: t <- t + d - d_prev,
    x <- x - lr t, with d the gradient (or, with `momentum`, the heavy ball: momentum
    tracking, Takezawa et al. 2023). A swap: each side hands over half its tracker and
    averages the models; in a complete swap that is t_i, t_j <- (t_i + t_j) / 2 and
    x_i, x_j <- (x_i + x_j) / 2. The tracker mass travels as running totals, so a lost,
    late or repeated message moves none twice and loses none: sum_i t_i + mass in flight
    = sum_i d_prev_i always (eq. 26), which is what makes the fixed point the minimiser.

    Messages: "w/NAME" (the model) and "t/NAME" (the total given to the receiver so far).
    No exchange privacy: noise on the tracker would never be taken out again.
    """

    methods = ("gradient-tracking",)

    def __init__(
        self,
        *,
        config: ConsensusConfig,
        node: str,
        peers: Sequence[str],
        params: Mapping[str, Tensor],
        privacy: ExchangePrivacy | None = None,
    ) -> None:
        if privacy is not None:
            raise ConsensusConfigError(
                "gradient-tracking does not support exchange privacy: noise added to the "
                "tracker would stay in sum_i t_i for good and move the fixed point; use gossip "
                "or an ECL method with exchange privacy, or privacy mode 'dpsgd'"
            )
        super().__init__(config=config, node=node, peers=peers, params=params)
        self.tracker = _zeros_like(self.params)
        self._previous = _zeros_like(self.params)
        self._given = {peer: _zeros_like(self.params) for peer in self.peers}
        self._taken = {peer: _zeros_like(self.params) for peer in self.peers}

    def _message_template(self) -> dict[str, Tensor]:
        return {
            **{f"w/{name}": w for name, w in self.params.items()},
            **{f"t/{name}": w for name, w in self.params.items()},
        }

    def local_step(self, grads: Mapping[str, Tensor]) -> None:
        """Eq. 25: t <- t + d - d_prev, then x <- x - lr t."""
        rate = self.learning_rate
        directions = self._directions(grads)
        with torch.no_grad():
            tracker = self._aligned(self.tracker)
            kernels.track_(tracker, self._aligned(directions), self._aligned(self._previous))
            kernels.sgd_update_(self._aligned(self.params), tracker, learning_rate=rate)
        self.step += 1

    def outgoing(self, peer: str) -> dict[str, Tensor]:
        """Hands half the tracker to `peer` (eq. 26a): call once per message sent."""
        self._check_peer(peer)
        with torch.no_grad():
            kernels.give_half_(self._aligned(self.tracker), self._aligned(self._given[peer]))
        message = snapshot({f"w/{name}": w for name, w in self.params.items()})
        message.update(snapshot({f"t/{name}": t for name, t in self._given[peer].items()}))
        return message

    def incoming(self, peer: str, tensors: Mapping[str, Tensor]) -> None:
        """Eq. 26b: average the models, take what the peer gave since its last message."""
        self._check_message(peer, tensors)
        models = self._aligned(self._unpack(tensors, "w"))
        given = self._aligned(self._unpack(tensors, "t"))
        with torch.no_grad():
            kernels.pairwise_average_(self._aligned(self.params), models)
            taken = self._aligned(self._taken[peer])
            kernels.take_given_(self._aligned(self.tracker), taken, given)

    def _stores(self) -> dict[str, dict[str, Tensor]]:
        stores = {"tracker": self.tracker, "previous": self._previous}
        for peer in self.peers:
            stores[f"given/{peer}"] = self._given[peer]
            stores[f"taken/{peer}"] = self._taken[peer]
        return stores

    def state_dict(self) -> dict:
        state: dict[str, Any] = super().state_dict()
        for prefix, store in self._stores().items():
            for name, tensor in snapshot(store).items():
                state["tensors"][f"{prefix}/{name}"] = tensor
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        tensors = state["tensors"]
        with torch.no_grad():
            for prefix, store in self._stores().items():
                for name, target in store.items():
                    saved = tensors[f"{prefix}/{name}"]
                    if saved.shape != target.shape:
                        raise ValueError(f"state tensor {prefix}/{name} has the wrong shape")
                    target.copy_(saved)
