"""What every node algorithm shares: the interface, peer and message checks, momentum, state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from consensus import kernels
from consensus.config import ConsensusConfig
from consensus.lr_schedule import learning_rate_at
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
    `outgoing` may change the node's state (gradient tracking hands over half its tracker):
    call it once per message sent. With exchange privacy, `outgoing` raises
    PrivacyBudgetExhausted once the node's budget is spent: the caller sends nothing in that
    direction, still delivers the other one, and the node keeps stepping and receiving.
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


def snapshot(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous detached copies (safe to keep, send or save)."""
    return {k: t.detach().clone(memory_format=torch.contiguous_format) for k, t in tensors.items()}


class HeavyBall:
    """Heavy-ball buffers m <- b m + g (eq. 24), one per parameter; none when b = 0."""

    def __init__(self, params: Mapping[str, Tensor], *, momentum: float) -> None:
        self.momentum = float(momentum)
        self.buffers: dict[str, Tensor] = {}
        if self.momentum > 0:
            self.buffers = {
                name: torch.zeros_like(w, memory_format=torch.contiguous_format)
                for name, w in params.items()
            }

    def __call__(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The step direction: `grads` themselves without momentum, else the updated buffers."""
        if not self.buffers:
            return dict(grads)
        with torch.no_grad():
            names = list(self.buffers)
            kernels.heavy_ball_(
                [self.buffers[n] for n in names], [grads[n] for n in names], momentum=self.momentum
            )
        return dict(self.buffers)

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"momentum/{name}": t for name, t in snapshot(self.buffers).items()}

    def load(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore the buffers from `state_tensors()` output (refuses a state without them)."""
        if not self.buffers and any(key.startswith("momentum/") for key in tensors):
            raise ValueError("state has momentum buffers but momentum is 0: keep it on restart")
        with torch.no_grad():
            for name, buffer in self.buffers.items():
                saved = tensors.get(f"momentum/{name}")
                if saved is None or saved.shape != buffer.shape:
                    raise ValueError(
                        f"state has no momentum buffer of shape {tuple(buffer.shape)} for {name}: "
                        "it was saved with another momentum setting; keep `momentum` on restart"
                    )
                buffer.copy_(saved)


class NodeAlgorithm:
    """Shared plumbing: peers, message-name checks, in-place writes, step counter, momentum."""

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
        self.momentum = HeavyBall(self.params, momentum=config.momentum)
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

    def _directions(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The step direction: gradient plus weight decay, through the heavy ball (eq. 24)."""
        return self.momentum(self._gradients(grads))

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
            return snapshot({f"w/{name}": w for name, w in self.params.items()})
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

        Momentum buffers travel as "momentum/NAME" tensors. With exchange privacy, its
        references, spent epsilon (and generator state, if the privacy object checkpoints it)
        travel under "privacy/..." tensors and meta["privacy"].
        """
        state: dict[str, Any] = {"tensors": self.momentum.state_tensors(), "meta": self._meta()}
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
        self.momentum.load(state["tensors"])
        if self.privacy is not None:
            prefix = "privacy/"
            tensors = {
                k[len(prefix) :]: v for k, v in state["tensors"].items() if k.startswith(prefix)
            }
            self.privacy.load_state_dict({"tensors": tensors, "meta": meta["privacy"]})
        self.step = int(meta["step"])
