"""Encoding and structural decoding of consensus messages: safetensors bytes, never pickle."""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Mapping
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
MAX_NAME_LENGTH = 128  # sender, receiver and method names (see _NAME_RE)
HEADER_MARGIN = 4096  # slack over the largest header a schema's message can have
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
    "sequence_jump",
)

# ASCII-only patterns (fullmatch); node and method names, tensor names, hex digests, integers.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_TENSOR_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,255}")
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_UINT_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_PAD = b" "  # safetensors pads the JSON header with spaces to an 8-byte boundary


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
    if tensor.is_cpu and tensor.is_contiguous():  # the usual case, in two calls instead of five
        return tensor.detach().view(-1).view(torch.uint8)
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
    """Owned tensors, filled by one copy of the whole data section into a fresh allocation.

    Each tensor is a view of its own byte range of that allocation (the ranges tile it, never
    overlap), so it is independent of the input bytes and of the other tensors. An entry whose
    offset is not a multiple of its item size (mixed dtypes) gets its own aligned copy.
    """
    size = len(data) - parsed.data_start
    buffer = torch.empty(size, dtype=torch.uint8)
    if size:
        start = parsed.data_start
        buffer.numpy()[:] = np.frombuffer(data, dtype=np.uint8, count=size, offset=start)
    tensors: dict[str, torch.Tensor] = {}
    for entry in parsed.entries:
        dtype = WIRE_DTYPES[entry.dtype]
        raw = buffer[entry.begin : entry.end]
        if entry.begin % dtype.itemsize:
            raw = raw.clone()
        tensors[entry.name] = raw.view(dtype).reshape(entry.shape)
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


def message_size_limit(schema: MessageSchema, *, margin: int = HEADER_MARGIN) -> int:
    """The largest encoded message of `schema`, plus `margin` bytes.

    The header is built as the encoder writes it, with the schema's method (a gate refuses any
    other) and the longest names and sequence the header rules allow, so no valid message of
    this schema is larger: a receiver can refuse anything above this on the announced size,
    before buffering a byte (docs/wire-format.md, section 4).
    """
    metadata = _header_metadata(
        MessageHeader(
            sender="s" * MAX_NAME_LENGTH,
            receiver="r" * MAX_NAME_LENGTH,
            method=schema.method,
            schema_hash="0" * 64,
            sequence=MAX_SEQUENCE,
        )
    )
    json_header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for spec in sorted(schema.tensors, key=lambda s: s.name):
        size = math.prod(spec.shape) * WIRE_DTYPES[spec.dtype].itemsize
        json_header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(json_header, sort_keys=True, separators=(",", ":"))
    return 8 + len(text.encode()) + 7 + offset + margin  # + 7: the padding to 8 bytes
