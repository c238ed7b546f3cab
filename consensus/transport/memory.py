"""In-memory transport for the simulation: real wire bytes through each receiver's gate."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from consensus.algorithms import Algorithm
from consensus.privacy_errors import PrivacyBudgetExhausted
from consensus.schema import MessageSchema
from consensus.wire import (
    REASONS,
    Message,
    MessageGate,
    MessageHeader,
    MessageRejected,
    SequenceCounter,
    encode_message,
)


class Aggregator(Protocol):
    """A FedAvg server (consensus.algorithms.FedAvgServer): averages client messages."""

    node: str
    clients: tuple[str, ...]

    def aggregate(self, messages: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]: ...


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One message in one direction: its size on the wire and what became of it.

    `withheld`: the sender sent nothing, because its privacy budget is spent
    (PrivacyBudgetExhausted from its `outgoing`); such a direction counts as not sent.
    """

    sender: str
    receiver: str
    num_bytes: int
    lost: bool = False
    rejected: str | None = None  # a MessageRejected reason code
    withheld: bool = False

    @property
    def delivered(self) -> bool:
        return not self.withheld and not self.lost and self.rejected is None


@dataclass(frozen=True, kw_only=True)
class SwapResult:
    """Both directions of one swap over edge (a, b)."""

    ab: Delivery
    ba: Delivery


@dataclass(frozen=True, kw_only=True)
class LinkStats:
    """Counters of one directed link, as the results store records them."""

    sender: str
    receiver: str
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_lost: int = 0
    messages_delivered: int = 0
    bytes_delivered: int = 0
    rejections: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    messages_withheld: int = 0  # not sent: the sender's privacy budget is spent

    @property
    def messages_rejected(self) -> int:
        return sum(self.rejections.values())

    def counted(self, delivery: Delivery) -> LinkStats:
        """These counters plus one delivery (a new object; stats are immutable snapshots)."""
        if delivery.withheld:
            return dataclasses.replace(self, messages_withheld=self.messages_withheld + 1)
        rejections = dict(self.rejections)
        if delivery.rejected is not None:
            rejections[delivery.rejected] = rejections.get(delivery.rejected, 0) + 1
        return LinkStats(
            sender=self.sender,
            receiver=self.receiver,
            messages_sent=self.messages_sent + 1,
            bytes_sent=self.bytes_sent + delivery.num_bytes,
            messages_lost=self.messages_lost + delivery.lost,
            messages_delivered=self.messages_delivered + delivery.delivered,
            bytes_delivered=self.bytes_delivered + delivery.num_bytes * delivery.delivered,
            rejections=rejections,
            messages_withheld=self.messages_withheld,
        )


@dataclass(frozen=True, kw_only=True)
class TransportStats:
    """All links, sorted by (sender, receiver), and totals over them."""

    links: tuple[LinkStats, ...]

    @property
    def messages_sent(self) -> int:
        return sum(link.messages_sent for link in self.links)

    @property
    def bytes_sent(self) -> int:
        return sum(link.bytes_sent for link in self.links)

    @property
    def messages_delivered(self) -> int:
        return sum(link.messages_delivered for link in self.links)

    @property
    def messages_withheld(self) -> int:
        return sum(link.messages_withheld for link in self.links)

    @property
    def rejections(self) -> dict[str, int]:
        return {r: sum(link.rejections.get(r, 0) for link in self.links) for r in REASONS}


@dataclass
class _Endpoint:
    """One node's side of the transport: its algorithm (None for the server), gate and counter."""

    algorithm: Algorithm | None
    schema: MessageSchema
    digest: str  # schema.digest, hashed once
    gate: MessageGate
    sequence: SequenceCounter


class InMemoryTransport:
    """Moves messages between registered nodes in one process, through the real wire format.

    Every message is built by the sender's algorithm, encoded to bytes, and (unless lost)
    validated by the receiver's `MessageGate` before the receiver's algorithm sees it, so
    the simulation exercises exactly the checks a real node runs. Deterministic: no
    threads, no clock; which swaps happen and which messages are lost is the caller's
    (the seeded exchange schedule's) decision.
    """

    def __init__(self, *, boot_epoch: int = 0, max_bytes: int | None = None) -> None:
        self.boot_epoch = boot_epoch
        self.max_bytes = max_bytes
        self._endpoints: dict[str, _Endpoint] = {}
        self._links: dict[tuple[str, str], LinkStats] = {}
        # Checkpointed state of endpoints not registered yet (the FedAvg server joins late).
        self._deferred: dict[str, Mapping[str, Any]] = {}

    def register(self, algorithm: Algorithm, *, peers: Iterable[str]) -> None:
        """Add a node: its algorithm and the peers whose messages its gate accepts."""
        self._add(algorithm.node, algorithm, algorithm.wire_schema(), peers)

    def register_server(self, server: Aggregator, *, schema: MessageSchema) -> None:
        """Add a FedAvg server; its gate accepts `server.clients` and their `schema`.

        `broadcast_round` does this at the first round with the first client's schema.
        """
        self._add(server.node, None, schema, server.clients)

    def _add(
        self, node: str, algorithm: Algorithm | None, schema: MessageSchema, peers: Iterable[str]
    ) -> None:
        if node in self._endpoints:
            raise ValueError(f"node {node!r} is already registered")
        gate = MessageGate(node=node, peers=peers, schema=schema, max_bytes=self.max_bytes)
        counter = SequenceCounter(boot_epoch=self.boot_epoch)
        self._endpoints[node] = _Endpoint(algorithm, schema, schema.digest, gate, counter)
        if node in self._deferred:
            self._load_endpoint(node, self._deferred.pop(node))

    def gate(self, node: str) -> MessageGate:
        """The receiver-side gate of `node` (for its rejection counters and state)."""
        return self._endpoint(node).gate

    def _endpoint(self, node: str) -> _Endpoint:
        if node not in self._endpoints:
            raise KeyError(f"node {node!r} is not registered; call register() first")
        return self._endpoints[node]

    def encode(self, sender: str, receiver: str, tensors: Mapping[str, Tensor]) -> bytes:
        """Wire bytes of `tensors` from `sender` to `receiver`, with the sender's next sequence."""
        endpoint = self._endpoint(sender)
        header = MessageHeader(
            sender=sender,
            receiver=receiver,
            method=endpoint.schema.method,
            schema_hash=endpoint.digest,
            sequence=endpoint.sequence.next(),
        )
        return encode_message(Message(header=header, tensors=tensors))

    def send(self, sender: str, receiver: str) -> bytes:
        """The sender's outgoing message for `receiver`, as wire bytes."""
        algorithm = self._endpoint(sender).algorithm
        if algorithm is None:
            raise ValueError(f"{sender!r} has no algorithm; servers send from broadcast_round")
        return self.encode(sender, receiver, algorithm.outgoing(receiver))

    def deliver(self, sender: str, receiver: str, data: bytes, *, lost: bool = False) -> Delivery:
        """Hand `data` to the receiver's gate and, if accepted, to its algorithm; count it."""
        delivery, _ = self._receive(sender, receiver, data, lost=lost)
        return delivery

    def _receive(
        self, sender: str, receiver: str, data: bytes, *, lost: bool
    ) -> tuple[Delivery, Message | None]:
        endpoint = self._endpoint(receiver)
        message, rejected = None, None
        if not lost:
            try:
                message = endpoint.gate.accept(data, authenticated_sender=sender)
            except MessageRejected as err:
                rejected = err.reason
        if message is not None and endpoint.algorithm is not None:
            endpoint.algorithm.incoming(sender, message.tensors)
        delivery = Delivery(
            sender=sender, receiver=receiver, num_bytes=len(data), lost=lost, rejected=rejected
        )
        link = self._links.get((sender, receiver), LinkStats(sender=sender, receiver=receiver))
        self._links[(sender, receiver)] = link.counted(delivery)
        return delivery, message

    def swap(self, a: str, b: str, *, lost_ab: bool = False, lost_ba: bool = False) -> SwapResult:
        """One exchange over edge (a, b): both messages are built before either is received.

        A sender whose privacy budget is spent sends nothing (that direction is `withheld`);
        the other direction is still delivered to it.
        """
        self._endpoint(a), self._endpoint(b)  # both registered, before anything is sent
        data_ab, data_ba = self._send_unless_withheld(a, b), self._send_unless_withheld(b, a)
        ab = self._deliver_or_withhold(a, b, data_ab, lost=lost_ab)
        ba = self._deliver_or_withhold(b, a, data_ba, lost=lost_ba)
        return SwapResult(ab=ab, ba=ba)

    def _send_unless_withheld(self, sender: str, receiver: str) -> bytes | None:
        """`send`, or None when the sender's privacy budget is spent (it sends nothing)."""
        try:
            return self.send(sender, receiver)
        except PrivacyBudgetExhausted:
            return None

    def receive(
        self, sender: str, receiver: str, data: bytes | None, *, lost: bool = False
    ) -> Delivery:
        """`deliver`, or, when `data` is None (the sender's budget is spent), a withheld
        direction: the receiver's half of a swap whose sender half ran elsewhere (Ray actors)."""
        return self._deliver_or_withhold(sender, receiver, data, lost=lost)

    def send_unless_withheld(self, sender: str, receiver: str) -> bytes | None:
        """`send`, or None when the sender's privacy budget is spent (it sends nothing)."""
        return self._send_unless_withheld(sender, receiver)

    def _deliver_or_withhold(
        self, sender: str, receiver: str, data: bytes | None, *, lost: bool
    ) -> Delivery:
        if data is not None:
            return self.deliver(sender, receiver, data, lost=lost)
        delivery = Delivery(sender=sender, receiver=receiver, num_bytes=0, withheld=True)
        link = self._links.get((sender, receiver), LinkStats(sender=sender, receiver=receiver))
        self._links[(sender, receiver)] = link.counted(delivery)
        return delivery

    def broadcast_round(self, server: Aggregator, clients: Sequence[str]) -> list[Delivery]:
        """One FedAvg round: clients -> server, server.aggregate, server -> every client.

        The server joins at its first round unless `register_server` was called. Clients
        whose upload is rejected, or withheld (privacy budget spent), are left out of the
        average; all receive the new model.
        """
        if server.node not in self._endpoints:
            self.register_server(server, schema=self._endpoint(clients[0]).schema)
        uploads: dict[str, Mapping[str, Tensor]] = {}
        deliveries: list[Delivery] = []
        for client in clients:
            data = self._send_unless_withheld(client, server.node)
            if data is None:
                deliveries.append(self._deliver_or_withhold(client, server.node, None, lost=False))
                continue
            delivery, message = self._receive(client, server.node, data, lost=False)
            deliveries.append(delivery)
            if message is not None:
                uploads[client] = message.tensors
        if not uploads:
            return deliveries
        average = server.aggregate(uploads)
        for client in clients:
            data = self.encode(server.node, client, average)
            deliveries.append(self.deliver(server.node, client, data))
        return deliveries

    def stats(self) -> TransportStats:
        """A snapshot of every link's counters."""
        return TransportStats(links=tuple(self._links[key] for key in sorted(self._links)))

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: each node's sequence counter and gate memory, and the link counters."""
        endpoints = {
            node: {"sequence": e.sequence.state_dict(), "gate": e.gate.state_dict()}
            for node, e in sorted(self._endpoints.items())
        }
        links = [dataclasses.asdict(link) for link in self.stats().links]
        return {"endpoints": {**self._deferred, **endpoints}, "links": links}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint taken by `state_dict` on a transport with the same nodes."""
        for node, endpoint_state in state["endpoints"].items():
            if node in self._endpoints:
                self._load_endpoint(node, endpoint_state)
            else:
                self._deferred[node] = endpoint_state
        self._links = {}
        for row in state["links"]:
            link = LinkStats(**{**row, "rejections": dict(row["rejections"])})
            self._links[(link.sender, link.receiver)] = link

    def _load_endpoint(self, node: str, state: Mapping[str, Any]) -> None:
        endpoint = self._endpoints[node]
        endpoint.sequence.load_state_dict(state["sequence"])
        endpoint.gate.load_state_dict(state["gate"])
