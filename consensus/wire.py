"""Wire format of consensus messages: safetensors bytes, decoded without pickle, gated per node."""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from consensus.schema import DTYPE_NAMES, WIRE_DTYPES, MessageSchema

# Tensors travel as raw little-endian buffers; this module copies native bytes both ways.
if sys.byteorder != "little":  # pragma: no cover - no big-endian build machine exists
    raise ImportError("consensus.wire needs a little-endian host, as the wire format is")

WIRE_FORMAT = "ecl-wire"
WIRE_VERSION = 1
DEFAULT_MAX_BYTES = 128 * 2**20  # a DenseNet-121 float32 message is ~28 MB
MAX_HEADER_BYTES = 2**20  # safetensors' JSON header; DenseNet-121 needs ~40 kB
MAX_SEQUENCE = 2**63 - 1  # fits a signed 64-bit integer on every platform
MAX_NDIM = 8
HEADER_KEYS = frozenset(
    {"format", "version", "sender", "receiver", "method", "schema_hash", "sequence"}
)
ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
REASONS = (
    "too_large",
    "malformed",
    "unknown_sender",
    "wrong_receiver",
    "wrong_method",
    "wrong_schema",
    "wrong_shape",
    "wrong_dtype",
    "missing_tensor",
    "unexpected_tensor",
    "non_finite",
    "replayed",
    "stale",
)

# ASCII-only patterns (fullmatch); node and method names, tensor names, hex digests, integers.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_TENSOR_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,255}")
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_UINT_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_PAD = b" "  # safetensors pads the JSON header with spaces to an 8-byte boundary
# Exponent field of each float dtype, as an unsigned integer of the same width.
_EXPONENT_MASKS: dict[torch.dtype, tuple[type, np.unsignedinteger]] = {
    torch.float16: (np.uint16, np.uint16(0x7C00)),
    torch.bfloat16: (np.uint16, np.uint16(0x7F80)),
    torch.float32: (np.uint32, np.uint32(0x7F80_0000)),
    torch.float64: (np.uint64, np.uint64(0x7FF0_0000_0000_0000)),
}


class MessageRejected(Exception):
    """A received message failed validation; `reason` is a stable code (see REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class MessageHeader:
    """Who sent what to whom: carried as string values in safetensors' `__metadata__`."""

    sender: str
    receiver: str
    method: str
    schema_hash: str
    sequence: int
    version: int = WIRE_VERSION


@dataclass(frozen=True, kw_only=True, eq=False)
class Message:
    """A header and named tensors; equality compares tensors bit for bit (dtype, shape, bytes)."""

    header: MessageHeader
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        if self.header != other.header or set(self.tensors) != set(other.tensors):
            return False
        return all(_same_bits(t, other.tensors[name]) for name, t in self.tensors.items())

    __hash__ = None  # type: ignore[assignment]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(_as_bytes(a), _as_bytes(b))


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's little-endian bytes as a flat uint8 tensor (a view when already contiguous)."""
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Field checks shared by encoder and decoder (the decoder turns them into MessageRejected).


def _check_header(raw: Mapping[str, object]) -> MessageHeader:
    """Metadata strings -> MessageHeader, or MessageRejected('malformed')."""
    if set(raw) != HEADER_KEYS:
        raise MessageRejected("malformed", f"metadata keys must be exactly {sorted(HEADER_KEYS)}")
    meta = {k: v for k, v in raw.items() if isinstance(v, str)}
    if len(meta) != len(raw):
        raise MessageRejected("malformed", "metadata values must be strings")
    if meta["format"] != WIRE_FORMAT:
        raise MessageRejected("malformed", f"format is not {WIRE_FORMAT!r}")
    if meta["version"] != str(WIRE_VERSION):
        raise MessageRejected("malformed", f"unsupported version; this node reads {WIRE_VERSION}")
    for key in ("sender", "receiver", "method"):
        if not _NAME_RE.fullmatch(meta[key]):
            raise MessageRejected("malformed", f"{key} is not a valid name")
    if not _HASH_RE.fullmatch(meta["schema_hash"]):
        raise MessageRejected("malformed", "schema_hash is not 64 lowercase hex digits")
    if not _UINT_RE.fullmatch(meta["sequence"]) or int(meta["sequence"]) > MAX_SEQUENCE:
        raise MessageRejected("malformed", "sequence is not an integer in [0, 2**63)")
    return MessageHeader(
        sender=meta["sender"],
        receiver=meta["receiver"],
        method=meta["method"],
        schema_hash=meta["schema_hash"],
        sequence=int(meta["sequence"]),
        version=WIRE_VERSION,
    )


def _header_metadata(header: MessageHeader) -> dict[str, str]:
    return {
        "format": WIRE_FORMAT,
        "version": str(header.version),
        "sender": header.sender,
        "receiver": header.receiver,
        "method": header.method,
        "schema_hash": header.schema_hash,
        "sequence": str(header.sequence),
    }


def _check_tensor_name(name: object) -> str:
    if not isinstance(name, str) or not _TENSOR_NAME_RE.fullmatch(name) or name == "__metadata__":
        raise MessageRejected("malformed", f"invalid tensor name {str(name)[:80]!r}")
    return name


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_message(message: Message) -> bytes:
    """The message as a safetensors file; the same message always gives the same bytes.

    Raises ValueError when the message itself is not valid (a bug on the sending side).
    """
    header = message.header
    if not isinstance(header.sequence, int) or isinstance(header.sequence, bool):
        raise ValueError("sequence must be an int")
    metadata = _header_metadata(header)
    try:
        _check_header(metadata)
        names = sorted(_check_tensor_name(n) for n in message.tensors)
    except MessageRejected as err:
        raise ValueError(f"cannot encode message: {err.detail}") from err
    json_header: dict[str, object] = {"__metadata__": metadata}
    chunks: list[memoryview] = []
    offset = 0
    for name in names:
        tensor = message.tensors[name]
        if tensor.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} not in {list(WIRE_DTYPES)}")
        raw = _as_bytes(tensor)
        json_header[name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + raw.numel()],
        }
        offset += raw.numel()
        chunks.append(memoryview(raw.numpy()))
    text = json.dumps(json_header, sort_keys=True, separators=(",", ":")).encode()
    text += _PAD * (-(8 + len(text)) % 8)  # data starts 8-byte aligned, as safetensors writes
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(text)} bytes; the limit is {MAX_HEADER_BYTES}")
    return b"".join([struct.pack("<Q", len(text)), text, *chunks])  # one copy of the data


# ---------------------------------------------------------------------------------------------
# Decoding: parse and check everything from the header before touching tensor data.


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class _Parsed:
    header: MessageHeader
    entries: tuple[_Entry, ...]
    data_start: int


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise MessageRejected("malformed", f"duplicate JSON key {key[:80]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> object:
    raise MessageRejected("malformed", f"JSON constant {name} is not allowed")


def _load_json_header(data: bytes, max_bytes: int) -> tuple[dict[str, object], int]:
    """Size checks, then the JSON header as a dict; returns it and where tensor data starts."""
    if len(data) > max_bytes:
        raise MessageRejected("too_large", f"{len(data)} bytes > limit {max_bytes}")
    if len(data) < 8:
        raise MessageRejected("malformed", "shorter than the 8-byte header length")
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if header_len > MAX_HEADER_BYTES or header_len > len(data) - 8:
        raise MessageRejected("malformed", f"header length {header_len} exceeds the limit or data")
    try:
        text = bytes(data[8 : 8 + header_len]).decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except MessageRejected:
        raise
    except Exception as err:  # any JSON/Unicode/recursion failure is the sender's fault
        raise MessageRejected("malformed", f"header is not JSON ({type(err).__name__})") from None
    if not isinstance(obj, dict):
        raise MessageRejected("malformed", "header is not a JSON object")
    return obj, 8 + header_len


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(name: str, entry: object) -> _Entry:
    if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
        raise MessageRejected("malformed", f"tensor {name!r}: keys must be {sorted(ENTRY_KEYS)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise MessageRejected("malformed", f"tensor {name!r}: dtype not one of {list(WIRE_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(map(_is_uint, shape)):
        raise MessageRejected("malformed", f"tensor {name!r}: shape is not <= {MAX_NDIM} ints >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_uint, offsets)):
        raise MessageRejected("malformed", f"tensor {name!r}: data_offsets is not [begin, end]")
    begin, end = offsets
    if end < begin or end - begin != math.prod(shape) * WIRE_DTYPES[dtype].itemsize:
        raise MessageRejected("malformed", f"tensor {name!r}: byte range != shape x dtype size")
    return _Entry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_layout(entries: list[_Entry], data_len: int) -> None:
    """Byte ranges must tile the data buffer exactly: no gap, no overlap, nothing after."""
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise MessageRejected("malformed", f"{entry.name!r}: gap or overlap at byte {position}")
        position = entry.end
    if position != data_len:
        raise MessageRejected("malformed", f"tensor data covers {position} of {data_len} bytes")


def _parse(data: bytes, max_bytes: int) -> _Parsed:
    obj, data_start = _load_json_header(data, max_bytes)
    meta = obj.pop("__metadata__", None)
    if not isinstance(meta, dict):
        raise MessageRejected("malformed", "missing __metadata__ object")
    header = _check_header(meta)
    entries = [_check_entry(_check_tensor_name(name), entry) for name, entry in obj.items()]
    _check_layout(entries, len(data) - data_start)
    return _Parsed(header=header, entries=tuple(entries), data_start=data_start)


def _materialize(data: bytes, parsed: _Parsed) -> dict[str, torch.Tensor]:
    """Owned tensors: each is a fresh allocation filled by one copy from the input bytes."""
    tensors: dict[str, torch.Tensor] = {}
    for entry in parsed.entries:
        size = entry.end - entry.begin
        out = torch.empty(size, dtype=torch.uint8)
        if size:
            start = parsed.data_start + entry.begin
            out.numpy()[:] = np.frombuffer(data, dtype=np.uint8, count=size, offset=start)
        tensors[entry.name] = out.view(WIRE_DTYPES[entry.dtype]).reshape(entry.shape)
    return tensors


def _parse_safely(data: bytes, max_bytes: int) -> _Parsed:
    try:
        return _parse(data, max_bytes)
    except MessageRejected:
        raise
    except Exception as err:  # defence in depth: a hostile input must never escape as a crash
        raise MessageRejected("malformed", f"undecodable ({type(err).__name__})") from None


def _materialize_safely(data: bytes, parsed: _Parsed) -> dict[str, torch.Tensor]:
    try:
        return _materialize(data, parsed)
    except Exception as err:  # e.g. MemoryError: still a rejection, never a crash
        raise MessageRejected("malformed", f"tensor data: {type(err).__name__}") from None


def decode_message(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Bytes -> Message after structural validation; raises MessageRejected, nothing else.

    Checks size, header length, JSON, metadata fields, every tensor entry and the byte layout
    before any tensor data is read. Semantic checks (peer, schema, finiteness, sequence) are
    the `MessageGate`'s.
    """
    parsed = _parse_safely(data, max_bytes)
    return Message(header=parsed.header, tensors=_materialize_safely(data, parsed))


# ---------------------------------------------------------------------------------------------
# Receiver side: one gate per node.


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
    return not bool(np.any((bits & mask) == mask))


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
        # Default limit: the schema's payload plus the largest header a decoder accepts.
        self.max_bytes = schema.num_bytes + 8 + MAX_HEADER_BYTES if max_bytes is None else max_bytes
        self._digest = schema.digest
        self._specs = schema.by_name()
        self._last_sequence: dict[str, int] = {}
        self._rejections = dict.fromkeys(REASONS, 0)
        self.accepted = 0

    @property
    def rejections(self) -> dict[str, int]:
        """Rejected messages so far, per reason code (for metrics)."""
        return dict(self._rejections)

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
        for name, tensor in tensors.items():
            if not all_finite(tensor):
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
        last = self._last_sequence.get(header.sender)
        if last is not None and header.sequence == last:
            raise MessageRejected("replayed", f"sequence {header.sequence} already accepted")
        if last is not None and header.sequence < last:
            raise MessageRejected("stale", f"sequence {header.sequence} < last accepted {last}")

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
        if not all(isinstance(k, str) and _is_uint(v) for k, v in last.items()):
            raise ValueError("gate state 'last_sequence' must map peer names to ints >= 0")
        # Peers that left the topology are forgotten; a peer that comes back starts fresh.
        self._last_sequence = {k: int(v) for k, v in last.items() if k in self.peers}


# ---------------------------------------------------------------------------------------------
# Sender side.

EPOCH_SHIFT = 32  # sequence = boot_epoch * 2**32 + counter
MAX_BOOT_EPOCH = 2**31 - 1  # keeps every sequence below 2**63


class SequenceCounter:
    """Sender-side sequence numbers that stay strictly increasing across crashes.

    A checkpoint lags the messages already sent: a node that crashes after sending n but
    restores a counter of n - k would resend n - k + 1 .. n, which receivers reject as
    replays or stale. So the high bits are a boot epoch that the node increments and
    persists at every start *before* sending anything (one small durable write per boot);
    every sequence of boot e + 1 exceeds every sequence of boot e, whatever the checkpoint
    held. The low 32 bits count messages within one boot.
    """

    def __init__(self, *, boot_epoch: int, counter: int = 0) -> None:
        if not 0 <= boot_epoch <= MAX_BOOT_EPOCH:
            raise ValueError(f"boot_epoch must be in [0, {MAX_BOOT_EPOCH}]")
        if not 0 <= counter < 2**EPOCH_SHIFT:
            raise ValueError(f"counter must be in [0, 2**{EPOCH_SHIFT})")
        self.boot_epoch = boot_epoch
        self.counter = counter

    def next(self) -> int:
        """The next sequence number to put in a header."""
        if self.counter >= 2**EPOCH_SHIFT:
            raise OverflowError("2**32 messages in one boot: restart with the next boot epoch")
        sequence = (self.boot_epoch << EPOCH_SHIFT) + self.counter
        self.counter += 1
        return sequence

    def state_dict(self) -> dict[str, int]:
        return {"boot_epoch": self.boot_epoch, "counter": self.counter}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore within one boot (e.g. a snapshot); after a restart use a new boot epoch."""
        restored = SequenceCounter(boot_epoch=state["boot_epoch"], counter=state["counter"])
        self.boot_epoch, self.counter = restored.boot_epoch, restored.counter
