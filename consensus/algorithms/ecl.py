"""ECL at one node (eqs. 5-10) and ECL-ISVR, its weight set by the local steps (eqs. 21-23)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from consensus import kernels
from consensus.algorithms.base import NodeAlgorithm, snapshot
from consensus.config import ConsensusConfig
from consensus.flat_state import FlatState
from consensus.lr_schedule import step_weights

if TYPE_CHECKING:  # a type only: importing it would load Opacus with every algorithm
    from consensus.private_exchange import ExchangePrivacy


class EdgeConsensus(NodeAlgorithm):
    """ECL-PDMM / ECL-ADMM at one node (eqs. 5-10): primal step, outgoing duals, dual updates.

    With `momentum` > 0 the gradient term of eq. 5 is the heavy ball m (eq. 24): at a fixed
    point m = g / (1 - b), so the fixed point is still the minimiser (sec. 10.4).
    """

    methods = ("ecl-pdmm", "ecl-admm")

    def __init__(
        self,
        *,
        config: ConsensusConfig,
        node: str,
        peers: Sequence[str],
        params: Mapping[str, Tensor],
        node_order: Sequence[str],
        edge_weights: Mapping[str, float],
        privacy: ExchangePrivacy | None = None,
    ) -> None:
        super().__init__(config=config, node=node, peers=peers, params=params, privacy=privacy)
        rank = {name: k for k, name in enumerate(node_order)}
        absent = sorted({self.node, *self.peers} - set(rank))
        if absent or len(rank) != len(node_order):
            raise ValueError(f"node_order must list every node once; missing {absent}")
        if set(edge_weights) != set(self.peers) or min(edge_weights.values(), default=1) <= 0:
            raise ValueError("edge_weights needs one positive weight per neighbour")
        self._edges = {
            p: (kernels.edge_sign(rank[self.node], rank[p]), float(edge_weights[p]))
            for p in self.peers
        }
        self._fan_in_factors = kernels.tensor_consensus_weights(
            self.params, eta=1.0, fan_in_scaling=self.config.fan_in_scaling
        )
        self._sends_model = self.config.proximity_weight > 0
        # z_ij, y_ij and the received models live in flat buffers updated in place; these
        # {peer: {name: Tensor}} dicts hold views into them and are never rebound
        self._state = FlatState(
            self.params,
            edges=self._edges,
            factors=self._fan_in_factors,
            keep_received=self._sends_model,
        )
        self._duals = self._state.duals
        self._outgoing = self._state.outgoing
        self._received = self._state.received
        if self.config.dual_init == "model":
            self._warm_start_duals()

    @torch.no_grad()
    def _warm_start_duals(self) -> None:
        """z_ij = A_ij w_i(0): the common initial model is then a fixed point of the consensus
        terms (zero constraint force, eq. 5 with w_j = w_i), instead of z = 0, which pulls
        every model toward 0 until the first exchanges (docs/algorithm.md sec. 6.5)."""
        for peer, (sign, _) in self._edges.items():
            for name, w in self.params.items():
                self._duals[peer][name].copy_(w).mul_(sign)
        self._state.refresh_outgoing()

    def _message_template(self) -> dict[str, Tensor]:
        template = {f"y/{name}": w for name, w in self.params.items()}
        if self._sends_model:
            template.update({f"w/{name}": w for name, w in self.params.items()})
        return template

    def local_step(self, grads: Mapping[str, Tensor]) -> None:
        """Eq. 5 into the parameters, eq. 8 into the outgoing duals (kernels.ecl_primal_update)."""
        weights = step_weights(self.step, self.config)
        self._check_gradients(grads)
        decay = self.config.weight_decay
        if self.momentum.buffers:  # the heavy ball takes g + decay * w (eq. 24)
            grads, decay = self._directions(grads), 0.0
        self._state.primal_step(
            grads,
            mu=weights.inverse_step_size,
            consensus=weights.consensus,
            rho=weights.proximity,
            weight_decay=decay,
        )
        self.step += 1

    def outgoing(self, peer: str) -> dict[str, Tensor]:
        self._check_peer(peer)
        if self.privacy is not None:
            return self._private_outgoing(peer)
        # no copy: the caller encodes these views before this node's next local_step or
        # load_state_dict rewrites them in place, and never writes to them (Algorithm)
        message = {f"y/{name}": y for name, y in self._outgoing[peer].items()}
        if self._sends_model:
            message.update(snapshot({f"w/{name}": w for name, w in self.params.items()}))
        return message

    def _private_outgoing(self, peer: str) -> dict[str, Tensor]:
        """y_ij = z_ij - 2 A_ij released (eq. 8 with w_i replaced by its release), and with
        rho > 0 the same release as the "w/" part: one release, charged once.

        z_ij is the dual of the last primal step, the one the non-private y_ij used, so the
        message is that y_ij shifted by -2 A_ij (released - w_i) (equal up to float rounding).
        Raises PrivacyBudgetExhausted, before anything is released, once the budget is spent.
        """
        released = self._model_message(peer)
        shift = {name: released[f"w/{name}"] - w for name, w in self.params.items()}
        sign = self._edges[peer][0]
        dual = kernels.ecl_outgoing_dual(shift, self._outgoing[peer], sign=sign)
        message = {f"y/{name}": y for name, y in dual.items()}
        if self._sends_model:
            message.update(released)
        return message

    def incoming(self, peer: str, tensors: Mapping[str, Tensor]) -> None:
        self._check_message(peer, tensors)
        theta = None if self.method.endswith("-pdmm") else self.config.admm_relaxation
        self._state.update_dual(peer, self._unpack(tensors, "y"), theta=theta)  # eq. 9 or 10
        if self._sends_model:
            self._state.store_received(peer, self._unpack(tensors, "w"))  # eq. 7

    def state_dict(self) -> dict:
        state = super().state_dict()
        stores = {"dual": self._duals, "out": self._outgoing, "recv": self._received}
        for kind, store in stores.items():
            for peer, tensors in store.items():
                for name, tensor in snapshot(tensors).items():
                    state["tensors"][f"{kind}/{peer}/{name}"] = tensor
        state["meta"]["received"] = sorted(self._received)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        tensors = state["tensors"]

        def load(kind: str, peer: str) -> dict[str, Tensor]:
            for name, w in self.params.items():
                if tensors[f"{kind}/{peer}/{name}"].shape != w.shape:
                    raise ValueError(f"state tensor {kind}/{peer}/{name} has the wrong shape")
            return self._unpack(tensors, f"{kind}/{peer}")

        self._state.load(  # copied into the flat buffers: the views stay valid
            duals={p: load("dual", p) for p in self.peers},
            outgoing={p: load("out", p) for p in self.peers},
            received={p: load("recv", p) for p in state["meta"]["received"]},
        )


class EdgeConsensusISVR(EdgeConsensus):
    """ECL-ISVR (Niwa et al., ICML 2021) at one node: ECL with rho = 0 and the weight from K.

    `step_weights` sets eta / mu = 1 / (K - 1), K = max(config.isvr_local_steps, 2) (eq. 22),
    so with the symmetric edge weights e_ij = 1 / max(|N_i|, |N_j|) the step is, on a
    regular graph, w <- (1 - 1/K)(w - s g) + (1/K) mean_j(A_ij z_ij) (eq. 23). Everything
    else (duals, wire format, state, exchange privacy) is ECL's.
    """

    methods = ("ecl-isvr-pdmm", "ecl-isvr-admm")
