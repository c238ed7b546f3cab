"""Node-level algorithm objects (ECL-PDMM/ADMM, gossip, FedAvg, local) behind one interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from consensus import kernels
from consensus.config import ConsensusConfig
from consensus.flat_state import FlatState
from consensus.lr_schedule import learning_rate_at, step_weights
from consensus.schema import MessageSchema

if TYPE_CHECKING:  # a type only: importing it would load Opacus with every algorithm
    from consensus.private_exchange import ExchangePrivacy

SERVER = "server"


class UnknownPeerError(ValueError):
    """A message for or from a peer this node has no edge to; check the topology."""


@runtime_checkable
class Algorithm(Protocol):
    """What the simulation and a real hospital node both drive (docs/architecture.md).

    `params` are live tensors updated in place, never rebound. A swap over edge (i, j):
    m_ij = i.outgoing(j); m_ji = j.outgoing(i); i.incoming(j, m_ji); j.incoming(i, m_ij).
    The tensors of `outgoing` may be views of the node's state (ECL's y_ij is, to save a
    copy of the model per message): read-only, valid until the node's next `local_step` or
    `load_state_dict`; encode them before, or copy them (`incoming` copies what it keeps).
    With exchange privacy, `outgoing` raises PrivacyBudgetExhausted once the node's budget
    is spent: the caller sends nothing in that direction, still delivers the other one, and
    the node keeps stepping and receiving.
    """

    method: str
    node: str
    params: dict[str, Tensor]
    step: int

    @property
    def learning_rate(self) -> float: ...
    def local_step(self, grads: Mapping[str, Tensor]) -> None: ...
    def outgoing(self, peer: str) -> dict[str, Tensor]: ...
    def incoming(self, peer: str, tensors: Mapping[str, Tensor]) -> None: ...
    def wire_schema(self) -> MessageSchema: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def _snapshot(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: t.detach().clone(memory_format=torch.contiguous_format) for k, t in tensors.items()}


class _NodeAlgorithm:
    """Shared plumbing: peers, message-name checks, in-place writes, step counter, meta."""

    methods: tuple[str, ...] = ()  # the config.method values this class implements

    def __init__(
        self,
        *,
        config: ConsensusConfig,
        node: str,
        peers: Sequence[str],
        params: Mapping[str, Tensor],
        privacy: ExchangePrivacy | None = None,
    ) -> None:
        if not params:
            raise ValueError("an algorithm needs at least one parameter tensor")
        if config.method not in self.methods:
            raise ValueError(
                f"{type(self).__name__} implements {self.methods}, not {config.method}"
            )
        if privacy is not None and tuple(privacy.peers) != tuple(peers):
            raise ValueError(f"exchange privacy has peers {privacy.peers}, the node {peers}")
        self.config = config
        self.method = config.method
        self.node = node
        self.peers = tuple(peers)
        self.params: dict[str, Tensor] = dict(params)
        self.privacy = privacy
        self.step = 0
        self._message_shapes: dict[str, torch.Size] | None = None

    @property
    def learning_rate(self) -> float:
        """The learning rate of the next local step (eqs. 13-15)."""
        return learning_rate_at(self.step, self.config)

    def _message_template(self) -> dict[str, Tensor]:
        """One message's tensors (values irrelevant): defines names, shapes and dtypes."""
        raise NotImplementedError

    def wire_schema(self) -> MessageSchema:
        return MessageSchema.from_tensors(self.method, self._message_template())

    def _check_peer(self, peer: str) -> None:
        if peer not in self.peers:
            raise UnknownPeerError(f"{self.node} has no edge to {peer!r}; peers: {self.peers}")

    def _check_message(self, peer: str, tensors: Mapping[str, Tensor]) -> None:
        self._check_peer(peer)
        if self._message_shapes is None:  # shapes never change: computed once
            self._message_shapes = {k: t.shape for k, t in self._message_template().items()}
        expected = self._message_shapes
        if tensors.keys() != expected.keys():
            missing = sorted(set(expected) - set(tensors))
            extra = sorted(set(tensors) - set(expected))
            raise ValueError(
                f"message from {peer} does not fit {self.method}: missing {missing}, extra {extra}"
            )
        for name, tensor in tensors.items():
            if tensor.shape != expected[name]:
                raise ValueError(f"message from {peer}: {name} has shape {tuple(tensor.shape)}")

    def _check_gradients(self, grads: Mapping[str, Tensor]) -> None:
        if grads.keys() != self.params.keys():
            wrong = sorted(set(self.params) ^ set(grads))
            raise ValueError(f"gradients for {wrong} are missing or unexpected")

    def _gradients(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self._check_gradients(grads)
        return kernels.add_weight_decay(grads, self.params, weight_decay=self.config.weight_decay)

    def _aligned(self, tensors: Mapping[str, Tensor]) -> list[Tensor]:
        """`tensors` listed in the order of `self.params`, for the in-place list kernels."""
        return [tensors[name] for name in self.params]

    def _write(self, new: Mapping[str, Tensor]) -> None:
        """Copy into the live tensors (views stay valid; leaf parameters need no_grad)."""
        with torch.no_grad():
            for name, value in new.items():
                self.params[name].copy_(value)

    def _unpack(self, tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
        return {
            name: tensors[f"{prefix}/{name}"].to(dtype=w.dtype, device=w.device)
            for name, w in self.params.items()
        }

    def _model_message(self, peer: str) -> dict[str, Tensor]:
        """The "w/" part of a message: the model, or its private release for `peer`.

        With exchange privacy the release is charged first and raises PrivacyBudgetExhausted
        once the budget is spent; the raw model never leaves.
        """
        if self.privacy is None:
            return _snapshot({f"w/{name}": w for name, w in self.params.items()})
        released = self.privacy.release(peer, self.params)
        return {f"w/{name}": t for name, t in released.items()}

    def _meta(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "node": self.node,
            "step": self.step,
            "peers": list(self.peers),
        }

    def state_dict(self) -> dict:
        """{"tensors": {...}, "meta": {...}}; the parameters belong to the model checkpoint.

        With exchange privacy, its references, spent epsilon (and generator state, if the
        privacy object checkpoints it) travel under "privacy/..." tensors and meta["privacy"].
        """
        state: dict[str, Any] = {"tensors": {}, "meta": self._meta()}
        if self.privacy is not None:
            private = self.privacy.state_dict()
            for name, tensor in private["tensors"].items():
                state["tensors"][f"privacy/{name}"] = tensor
            state["meta"]["privacy"] = private["meta"]
        return state

    def load_state_dict(self, state: dict) -> None:
        meta = state["meta"]
        for key in ("method", "node"):
            if meta[key] != getattr(self, key):
                mine = getattr(self, key)
                raise ValueError(f"state is for {key}={meta[key]!r}, this is {mine!r}")
        if list(meta["peers"]) != list(self.peers):
            raise ValueError(f"state has peers {meta['peers']}, this node has {list(self.peers)}")
        if ("privacy" in meta) != (self.privacy is not None):
            raise ValueError(
                "state and node disagree on exchange privacy (saved with it: "
                f"{'privacy' in meta}); a restart must keep the privacy mode and its spent epsilon"
            )
        if self.privacy is not None:
            prefix = "privacy/"
            tensors = {
                k[len(prefix) :]: v for k, v in state["tensors"].items() if k.startswith(prefix)
            }
            self.privacy.load_state_dict({"tensors": tensors, "meta": meta["privacy"]})
        self.step = int(meta["step"])


class LocalSGD(_NodeAlgorithm):
    """Local-only baseline: plain SGD, exchanges carry nothing (eq. 11 without averaging)."""

    methods = ("local",)

    def _message_template(self) -> dict[str, Tensor]:
        return {}

    def local_step(self, grads: Mapping[str, Tensor]) -> None:
        rate = self.learning_rate
        grads = self._gradients(grads)
        with torch.no_grad():  # in place: views stay valid, leaf parameters need no_grad
            kernels.sgd_update_(
                self._aligned(self.params), self._aligned(grads), learning_rate=rate
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
    """FedAvg / co-learning client (eq. 12): SGD steps; a round sets w to the server average."""

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


class EdgeConsensus(_NodeAlgorithm):
    """ECL-PDMM / ECL-ADMM at one node (eqs. 5-10): primal step, outgoing duals, dual updates."""

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
        self._state.primal_step(
            grads,
            mu=weights.inverse_step_size,
            consensus=weights.consensus,
            rho=weights.proximity,
            weight_decay=self.config.weight_decay,
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
            message.update(_snapshot({f"w/{name}": w for name, w in self.params.items()}))
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
        theta = None if self.method == "ecl-pdmm" else self.config.admm_relaxation
        self._state.update_dual(peer, self._unpack(tensors, "y"), theta=theta)  # eq. 9 or 10
        if self._sends_model:
            self._state.store_received(peer, self._unpack(tensors, "w"))  # eq. 7

    def state_dict(self) -> dict:
        state = super().state_dict()
        stores = {"dual": self._duals, "out": self._outgoing, "recv": self._received}
        for kind, store in stores.items():
            for peer, tensors in store.items():
                for name, tensor in _snapshot(tensors).items():
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

    ECL: `node_order` fixes the edge signs (eq. 3) and must be the same on every node
    (default: sorted names); `edge_weights` are the relative per-edge weights (eq. 6) and
    must be symmetric - pass `Topology.edge_weights(node)`; the default 1 / |N_i| is
    symmetric only on regular graphs. FedAvg: the only peer is "server" (`neighbours` is
    ignored) and `num_samples` is required. `privacy` (exchange mode, docs/privacy.md): every
    message carries a private release of the model instead of the model, and `outgoing`
    raises PrivacyBudgetExhausted once the budget is spent; its peers must be the node's
    (["server"] for FedAvg). Local-only sends nothing, so it takes no privacy object.
    """
    common = {"config": config, "node": node, "params": params}
    if config.method == "local" and privacy is not None:
        raise ValueError("local-only training sends nothing: it needs no exchange privacy")
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
    order = list(node_order) if node_order is not None else sorted({node, *neighbours})
    if edge_weights is None:
        edge_weights = {peer: 1.0 / len(neighbours) for peer in neighbours}
    return EdgeConsensus(peers=neighbours, node_order=order, edge_weights=edge_weights, **common)
