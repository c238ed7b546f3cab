"""The receiver's gate: every check a node makes before a message reaches the math."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from consensus.schema import MessageSchema
from consensus.wire.codec import (
    REASONS,
    Message,
    MessageHeader,
    MessageRejected,
    _as_bytes,
    _Entry,
    _materialize_safely,
    _parse_safely,
    message_size_limit,
)
from consensus.wire.sequence import check_sequence

# Exponent field of each float dtype, as an unsigned integer of the same width.
_EXPONENT_MASKS: dict[torch.dtype, tuple[type, np.unsignedinteger]] = {
    torch.float16: (np.uint16, np.uint16(0x7C00)),
    torch.bfloat16: (np.uint16, np.uint16(0x7F80)),
    torch.float32: (np.uint32, np.uint32(0x7F80_0000)),
    torch.float64: (np.uint64, np.uint64(0x7FF0_0000_0000_0000)),
}


_FINITE_SLICE = 1 << 18  # elements checked at a time


def all_finite(tensor: torch.Tensor) -> bool:
    """True when a tensor holds no NaN or Inf (integer tensors always do).

    IEEE 754: a value is Inf or NaN exactly when its exponent bits are all ones. Tested on
    the raw bits with numpy, single-threaded: torch's per-tensor parallel reductions stall
    on a busy 2-core machine, and numpy has no bfloat16.
    """
    if tensor.dtype not in _EXPONENT_MASKS or tensor.numel() == 0:
        return True
    int_type, mask = _EXPONENT_MASKS[tensor.dtype]
    bits = _as_bytes(tensor).numpy().view(int_type)
    # by slices: their temporaries stay in cache (one 28 MB pass allocates ~60 MB of them)
    for start in range(0, bits.size, _FINITE_SLICE):
        part = bits[start : start + _FINITE_SLICE]
        if np.any((part & mask) == mask):
            return False
    return True


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding NaN or Inf, None when all are finite.

    Tensors of one dtype that tile one allocation (a decoded message) are checked in a single
    pass over it; the per-tensor check runs only to name the culprit, or for mixed layouts.
    """
    values = list(tensors.values())
    if values and _one_allocation(values) and all_finite(_whole_storage(values[0])):
        return None
    return next((name for name, t in tensors.items() if not all_finite(t)), None)


def _one_allocation(tensors: list[torch.Tensor]) -> bool:
    first = tensors[0]
    storage = first.untyped_storage()
    return (
        all(
            t.dtype == first.dtype and t.untyped_storage().data_ptr() == storage.data_ptr()
            for t in tensors
        )
        and sum(t.numel() for t in tensors) * first.element_size() == storage.nbytes()
    )


def _whole_storage(tensor: torch.Tensor) -> torch.Tensor:
    """Every element of `tensor`'s allocation, as one flat tensor of its dtype."""
    storage = tensor.untyped_storage()
    count = storage.nbytes() // tensor.element_size()
    return torch.empty(0, dtype=tensor.dtype).set_(storage, 0, (count,))


class MessageGate:
    """Everything a node checks before a message reaches the math (docs/wire-format.md, 5).

    Order: size, structure, sender, receiver, method, schema hash, sequence, tensor names,
    dtypes, shapes (all from the header, before tensor data is copied), then finiteness.
    The sequence memory changes only when a message passes every check.
    """

    def __init__(
        self,
        *,
        node: str,
        peers: Iterable[str],
        schema: MessageSchema,
        max_bytes: int | None = None,
    ) -> None:
        self.node = node
        self.peers = frozenset(peers)
        self.schema = schema
        # Default limit: the largest message this schema can have (header margin included).
        self.max_bytes = message_size_limit(schema) if max_bytes is None else max_bytes
        self._digest = schema.digest
        self._specs = schema.by_name()
        self._last_sequence: dict[str, int] = {}
        self._rejections = dict.fromkeys(REASONS, 0)
        self.accepted = 0

    @property
    def rejections(self) -> dict[str, int]:
        """Rejected messages so far, per reason code (for metrics)."""
        return dict(self._rejections)

    def last_sequence(self, sender: str) -> int | None:
        """The last sequence accepted from `sender` (None: none yet)."""
        return self._last_sequence.get(sender)

    def accept(self, data: bytes, *, authenticated_sender: str | None = None) -> Message:
        """The validated message, or MessageRejected (counted under its reason).

        `authenticated_sender`: who the channel says sent it (the TLS peer's certificate
        name, the in-memory link's sender); the header must then name that sender.
        """
        try:
            message = self._validate(data, authenticated_sender)
        except MessageRejected as err:
            self._rejections[err.reason] += 1
            raise
        self._last_sequence[message.header.sender] = message.header.sequence
        self.accepted += 1
        return message

    def _validate(self, data: bytes, authenticated_sender: str | None) -> Message:
        parsed = _parse_safely(data, self.max_bytes)
        self._check_envelope(parsed.header, authenticated_sender)
        self._check_entries(parsed.entries)
        tensors = _materialize_safely(data, parsed)
        name = first_non_finite(tensors)
        if name is not None:
            raise MessageRejected("non_finite", f"tensor {name!r} holds NaN or Inf")
        return Message(header=parsed.header, tensors=tensors)

    def _check_envelope(self, header: MessageHeader, authenticated_sender: str | None) -> None:
        if header.sender not in self.peers:
            raise MessageRejected(
                "unknown_sender", f"{header.sender!r} is not a peer of {self.node}"
            )
        if authenticated_sender not in (None, header.sender):
            raise MessageRejected("unknown_sender", f"channel is {authenticated_sender!r}")
        if header.receiver != self.node:
            raise MessageRejected("wrong_receiver", f"for {header.receiver!r}, this is {self.node}")
        if header.method != self.schema.method:
            raise MessageRejected("wrong_method", f"{header.method!r}, not {self.schema.method!r}")
        if header.schema_hash != self._digest:
            raise MessageRejected("wrong_schema", "schema hash differs: same model on both sides?")
        check_sequence(self._last_sequence.get(header.sender), header.sequence)

    def _check_entries(self, entries: tuple[_Entry, ...]) -> None:
        received = {e.name: e for e in entries}
        missing = sorted(set(self._specs) - set(received))
        if missing:
            raise MessageRejected("missing_tensor", f"{len(missing)} missing, e.g. {missing[0]!r}")
        unexpected = sorted(set(received) - set(self._specs))
        if unexpected:
            raise MessageRejected("unexpected_tensor", f"{len(unexpected)}, e.g. {unexpected[0]!r}")
        for name, spec in self._specs.items():
            got = received[name]
            if got.dtype != spec.dtype:
                raise MessageRejected("wrong_dtype", f"{name!r}: {got.dtype}, not {spec.dtype}")
            if got.shape != tuple(spec.shape):
                raise MessageRejected("wrong_shape", f"{name!r}: {got.shape}, not {spec.shape}")

    def state_dict(self) -> dict[str, object]:
        """JSON-able: the last accepted sequence per peer, so a restarted node rejects replays."""
        return {"node": self.node, "last_sequence": dict(sorted(self._last_sequence.items()))}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        last = state.get("last_sequence")
        if state.get("node") != self.node or not isinstance(last, Mapping):
            raise ValueError("gate state is for another node or has no 'last_sequence' mapping")
        if not all(isinstance(k, str) and _is_count(v) for k, v in last.items()):
            raise ValueError("gate state 'last_sequence' must map peer names to ints >= 0")
        # Peers that left the topology are forgotten; a peer that comes back starts fresh.
        self._last_sequence = {k: int(v) for k, v in last.items() if k in self.peers}


def forget_sender(state: Mapping[str, object], sender: str) -> tuple[dict[str, object], int | None]:
    """A gate `state_dict` without `sender`'s last sequence, and that sequence (None: none).

    For resetting one edge on a stopped node: its next message from `sender` is then taken
    whatever its (bounded) sequence number (hospital-node reset-edge).
    """
    last = dict(state.get("last_sequence") or {})  # type: ignore[call-overload]
    removed = last.pop(sender, None)
    return {**state, "last_sequence": last}, removed


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
