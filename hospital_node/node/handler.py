"""The node's SwapHandler: wire messages out, gate-validated messages in, applied per step."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from consensus.algorithms import Algorithm
from consensus.privacy_errors import PrivacyBudgetExhausted
from consensus.schema import MessageSchema
from consensus.transport.grpc_common import ModelWithheld, NodeNotReady
from consensus.wire import (
    Message,
    MessageGate,
    MessageHeader,
    MessageRejected,
    SequenceCounter,
    boot_epoch_of,
    encode_message,
)

log = logging.getLogger(__name__)

MODEL_METHOD = "model"  # the `method` header of a FetchModel reply (its own schema and gate)


def model_schema(params: Mapping[str, Tensor]) -> MessageSchema:
    """The tensors of a model message: `w/<param>` for every parameter, as in gossip."""
    return MessageSchema.from_tensors(MODEL_METHOD, {f"w/{n}": p for n, p in params.items()})


@dataclass(kw_only=True)
class _Release:
    """The last private release to one peer (exchange privacy), for re-sending it for free."""

    step: int  # the algorithm's step when it was made
    tensors: dict[str, Tensor]
    confirmed: bool = False  # a swap with the peer went through since


@dataclass(kw_only=True)
class PeerCounters:
    """Cumulative traffic with one neighbour (kept in checkpoints, so totals survive restarts)."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0  # accepted by the gate
    bytes_received: int = 0
    applied: int = 0  # handed to the algorithm
    dropped: int = 0  # accepted but superseded before the next step (queue full)
    models_served: int = 0
    models_refused: int = 0  # FetchModel refused: exchange privacy keeps the raw model home
    messages_withheld: int = 0  # swaps where we sent nothing: our privacy budget is spent
    withheld_received: int = 0  # swaps where the peer sent nothing: its budget is spent
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    last_received_at: float | None = None  # Unix time of the last accepted message

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class NodeHandler:
    """Implements consensus.transport.SwapHandler for one node; thread-safe.

    Incoming messages pass the MessageGate (schema, sender = the TLS peer name, sequence,
    finiteness) before anything else, under a lock of their own; accepted ones wait in a small
    per-peer queue that the training thread applies at the next step boundary (`apply_pending`),
    under the state lock shared with training. Applying between steps rather than at once keeps
    parameters still during forward/backward (gossip and FedAvg write them) and keeps the lock
    held for milliseconds, never for a network transfer.

    Until `attach()` gives it an algorithm (after restore or join) every swap gets NodeNotReady,
    which the peer sees as UNAVAILABLE and retries; `model_for` works from the start.

    Privacy: `before_send` (the node's privacy ledger) runs under the state lock after a
    message is computed and before its bytes leave, so the spent epsilon is on disk first.
    Once the exchange budget is spent, `outgoing_for` returns None (withheld; logged once)
    and the swap still delivers the peer's message. `serve_model=False` (exchange privacy)
    makes `model_for` refuse: the raw model would bypass the noise. `reuse_releases`
    (exchange privacy): every release costs epsilon, so the last message to a peer is sent
    again, with a new sequence number, until a swap with that peer confirms it (a neighbour
    that is down must not drain the budget through retries) and while no local step has
    changed the state (a neighbour that calls very often gets one release per step at most).
    Only a swap whose incoming message passed the gate (or was withheld) confirms, and a
    callee takes its message only after the caller's passed the gate: refused junk costs no
    release, no count, no confirmation (SwapHandler).
    """

    def __init__(
        self,
        *,
        name: str,
        peers: Iterable[str],
        params: Mapping[str, Tensor],
        swap_schema: MessageSchema,
        lock: threading.Lock,
        boot_epoch: int,
        max_pending_per_peer: int = 4,
        before_send: Callable[[], None] | None = None,
        serve_model: bool = True,
        reuse_releases: bool = False,
    ) -> None:
        self.name = name
        self._before_send = before_send
        self._serve_model = serve_model
        self._reuse_releases = reuse_releases
        self._releases: dict[str, _Release] = {}
        self._withholding_logged = False
        self.peers = tuple(sorted(peers))
        self._params = dict(params)
        self._lock = lock
        self._gate_lock = threading.Lock()
        self._counter = SequenceCounter(boot_epoch=boot_epoch)
        self._gate = MessageGate(node=name, peers=self.peers, schema=swap_schema)
        self._model_schema = model_schema(self._params)
        self._model_gate = MessageGate(node=name, peers=self.peers, schema=self._model_schema)
        self._pending: dict[str, deque[dict[str, Tensor]]] = {
            p: deque(maxlen=max_pending_per_peer) for p in self.peers
        }
        self._counters = {p: PeerCounters() for p in self.peers}
        self._boot_received: Counter[str] = Counter()
        self._algorithm: Algorithm | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def attach(self, algorithm: Algorithm) -> None:
        """Start taking part in swaps with `algorithm` (after the node restored or joined)."""
        if algorithm.wire_schema().digest != self._gate.schema.digest:
            raise ValueError("algorithm's wire schema differs from the one the gate checks")
        with self._lock:
            self._algorithm = algorithm

    def set_boot_epoch(self, boot_epoch: int) -> None:
        """Number this boot's messages from `boot_epoch` (only before anything was sent)."""
        with self._lock:
            if self._counter.counter:
                raise RuntimeError("messages were already sent in this boot epoch")
            self._counter = SequenceCounter(boot_epoch=boot_epoch)

    @property
    def ready(self) -> bool:
        return self._algorithm is not None

    # -- SwapHandler ------------------------------------------------------------------------------

    def outgoing_for(self, peer: str) -> bytes | None:
        """Our message for the edge to `peer`, with a fresh sequence number (every attempt);
        None (withheld) once this node's exchange-privacy budget is spent. Counted as sent only
        by `on_sent`, once the transport delivered it."""
        with self._lock:
            algorithm = self._require_algorithm()
            tensors = self._reusable(peer, algorithm) or self._new_message(algorithm, peer)
            if tensors is None:
                return None
            sequence = self._counter.next()
        return self._encode(peer, algorithm.method, self._gate.schema.digest, sequence, tensors)

    def validate(self, peer: str, payload: bytes) -> Message:
        """`payload` from the authenticated `peer` through the gate; MessageRejected (counted)
        otherwise. Nothing else changes: `deliver` queues it."""
        self._require_algorithm()
        return self._accept(self._gate, peer, payload)

    def deliver(self, peer: str, validated: Message, num_bytes: int) -> None:
        """Queue a validated message for the next step; the swap with `peer` went through."""
        with self._lock:
            queue = self._pending[peer]
            counters = self._counters[peer]
            if len(queue) == queue.maxlen:
                counters.dropped += 1  # deque drops the oldest: the newest state wins
            queue.append(dict(validated.tensors))
            counters.messages_received += 1
            counters.bytes_received += num_bytes
            counters.last_received_at = time.time()
            self._boot_received[peer] += 1
            self._confirm(peer)

    def on_received(self, peer: str, payload: bytes) -> None:
        """`validate` then `deliver` (a swap's incoming direction, in one call)."""
        self.deliver(peer, self.validate(peer, payload), len(payload))

    def on_withheld(self, peer: str) -> None:
        """`peer` sent nothing on our edge (its privacy budget is spent): keep the edge's state."""
        with self._lock:
            self._counters[peer].withheld_received += 1
            self._confirm(peer)

    def on_sent(self, peer: str, num_bytes: int) -> None:
        """The transport delivered our message of `num_bytes` to `peer`."""
        with self._lock:
            counters = self._counters[peer]
            counters.messages_sent += 1
            counters.bytes_sent += num_bytes

    @property
    def max_message_bytes(self) -> int:
        """The largest valid message either gate takes: the transport's size limit."""
        return max(self._gate.max_bytes, self._model_gate.max_bytes)

    def model_for(self, peer: str) -> bytes:
        """The current parameters for a neighbour that joins late (method 'model').

        Refused (ModelWithheld) under exchange privacy: the raw model would bypass the noise
        on every release; the late joiner starts from the common (public) initial model.
        """
        if not self._serve_model:
            with self._lock:
                self._counters[peer].models_refused += 1
            log.info("%s: refused to send its model to %s: exchange privacy is on, and the raw "
                     "model would bypass its noise; %s starts from the common initial model",
                     self.name, peer, peer)  # fmt: skip
            raise ModelWithheld(
                f"{self.name} runs exchange privacy and does not send its raw model; "
                "start from the common initial model (join = 'scratch')"
            )
        with self._lock:
            tensors = {f"w/{n}": p.detach().clone() for n, p in self._params.items()}
            self._record_spending()  # DP-SGD: the steps behind this model are on disk
            sequence = self._counter.next()
            self._counters[peer].models_served += 1
        return self._encode(peer, MODEL_METHOD, self._model_schema.digest, sequence, tensors)

    # -- used by the node -------------------------------------------------------------------------

    def accept_model(self, peer: str, payload: bytes) -> dict[str, Tensor]:
        """Parameters from a neighbour's model message, validated like any message."""
        message = self._accept(self._model_gate, peer, payload)
        return {name.removeprefix("w/"): t for name, t in message.tensors.items()}

    def apply_pending(self) -> int:
        """Hand every queued message to the algorithm (training thread, between steps)."""
        applied = 0
        with self._lock:
            algorithm = self._algorithm
            if algorithm is None:
                return 0
            for peer, queue in self._pending.items():
                while queue:
                    algorithm.incoming(peer, queue.popleft())
                    self._counters[peer].applied += 1
                    applied += 1
        return applied

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: gates' last sequences and the traffic counters (for the checkpoint)."""
        with self._gate_lock:
            gates = {"swap": self._gate.state_dict(), "model": self._model_gate.state_dict()}
        with self._lock:
            counters = {p: asdict(c) for p, c in self._counters.items()}
            sequence = self._counter.state_dict()
        return {"gates": gates, "counters": counters, "sequence": sequence}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore gates and counters; the sequence counter keeps this boot's epoch."""
        with self._gate_lock:
            self._gate.load_state_dict(state["gates"]["swap"])
            self._model_gate.load_state_dict(state["gates"]["model"])
        with self._lock:
            for peer, saved in state["counters"].items():
                if peer in self._counters:
                    self._counters[peer] = PeerCounters(**saved)

    def snapshot(self) -> dict[str, Any]:
        """Counters for status.json: gate totals of this boot, per-peer cumulative traffic."""
        with self._gate_lock:
            gate = {
                "accepted": self._gate.accepted,
                "rejected": {k: v for k, v in self._gate.rejections.items() if v},
                "models_accepted": self._model_gate.accepted,
                "models_rejected": {k: v for k, v in self._model_gate.rejections.items() if v},
            }
            last = {p: self._gate.last_sequence(p) for p in self.peers}
        with self._lock:
            peers = {
                p: asdict(c)
                | {
                    "received_this_boot": self._boot_received[p],
                    # the sender's boot epoch of the last message accepted (wire-format.md 6)
                    "last_boot_epoch": None if last[p] is None else boot_epoch_of(last[p]),
                }
                for p, c in self._counters.items()
            }
            pending = sum(len(q) for q in self._pending.values())
        return {"ready": self.ready, "gate": gate, "pending": pending, "peers": peers}

    def counters(self) -> dict[str, PeerCounters]:
        """A copy of the per-peer counters (for the results store's exchanges table)."""
        with self._lock:
            return {p: PeerCounters(**asdict(c)) for p, c in self._counters.items()}

    # -- internals --------------------------------------------------------------------------------

    def _new_message(self, algorithm: Algorithm, peer: str) -> dict[str, Tensor] | None:
        """A fresh outgoing message (caller holds the lock), or None once the budget is spent."""
        try:
            outgoing = algorithm.outgoing(peer)
        except PrivacyBudgetExhausted as exc:
            self._withhold(peer, exc)
            return None
        # outgoing() may return views of the algorithm's buffers, which the training
        # thread rewrites at its next step: copy them under the lock, encode outside it
        tensors = {k: t.detach().to("cpu", copy=True) for k, t in outgoing.items()}
        self._record_spending()  # the spent epsilon is durable before the bytes leave
        if self._reuse_releases:
            self._releases[peer] = _Release(step=algorithm.step, tensors=tensors)
        return tensors

    def _record_spending(self) -> None:
        """Run `before_send` (caller holds the lock); a ledger that cannot be written (disk
        full) sends nothing: NodeNotReady, which the peer retries later."""
        if self._before_send is None:
            return
        try:
            self._before_send()
        except OSError as exc:
            raise NodeNotReady(
                f"{self.name} cannot record its privacy spending ({exc}), so it sends nothing "
                "until it can"
            ) from exc

    def _reusable(self, peer: str, algorithm: Algorithm) -> dict[str, Tensor] | None:
        """The last release to `peer` while a swap has not confirmed it, or while no local
        step has happened since (the same state would be released again); caller holds the lock."""
        release = self._releases.get(peer)
        if release is None or (release.confirmed and release.step != algorithm.step):
            return None
        return release.tensors

    def _confirm(self, peer: str) -> None:
        """A swap with `peer` went through (its message passed the gate, or it withheld): it
        has our last release; the caller holds the lock."""
        if peer in self._releases:
            self._releases[peer].confirmed = True

    def _withhold(self, peer: str, exc: PrivacyBudgetExhausted) -> None:
        """Count a withheld message (caller holds the lock); log the first one of this run."""
        self._counters[peer].messages_withheld += 1
        if not self._withholding_logged:
            self._withholding_logged = True
            log.warning("%s: stops sending to every neighbour: %s", self.name, exc)

    def _require_algorithm(self) -> Algorithm:
        algorithm = self._algorithm
        if algorithm is None:
            raise NodeNotReady(f"{self.name} is still restoring or joining; retry shortly")
        return algorithm

    def _accept(self, gate: MessageGate, peer: str, payload: bytes) -> Message:
        with self._gate_lock:
            try:
                return gate.accept(payload, authenticated_sender=peer)
            except MessageRejected as exc:
                self._count_rejection(peer, exc)
                raise

    def _count_rejection(self, peer: str, exc: MessageRejected) -> None:
        log.warning(
            "%s: refused a message from %s: %s (%s)", self.name, peer, exc.reason, exc.detail
        )
        with self._lock:
            counters = self._counters.get(peer)
            if counters is not None:
                counters.rejected[exc.reason] = counters.rejected.get(exc.reason, 0) + 1

    def _encode(
        self, peer: str, method: str, digest: str, sequence: int, tensors: Mapping[str, Tensor]
    ) -> bytes:
        header = MessageHeader(
            sender=self.name, receiver=peer, method=method, schema_hash=digest, sequence=sequence
        )
        cpu = {k: t.detach().to("cpu") for k, t in tensors.items()}
        return encode_message(Message(header=header, tensors=cpu))


def copy_parameters(target: Mapping[str, Tensor], source: Mapping[str, Tensor]) -> None:
    """Write `source` into the live tensors `target` in place (names and shapes must match)."""
    if set(target) != set(source):
        raise ValueError("parameter names differ between the model and the received model")
    with torch.no_grad():
        for name, tensor in target.items():
            tensor.copy_(source[name].to(dtype=tensor.dtype, device=tensor.device))
