"""Wire format: round trips, hostile bytes, each gate rejection, replay protection over restarts."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.schema import WIRE_DTYPES, MessageSchema
from consensus.wire import (
    EPOCH_SHIFT,
    MAX_BOOT_EPOCH,
    MAX_HEADER_BYTES,
    REASONS,
    Message,
    MessageGate,
    MessageHeader,
    MessageRejected,
    SequenceCounter,
    all_finite,
    decode_message,
    encode_message,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOSTILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# Strategies: valid messages with arbitrary bit patterns in the tensors.

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
node_names = st.text(ALNUM, min_size=1, max_size=1).flatmap(
    lambda first: st.text(ALNUM + "._:-", max_size=20).map(lambda rest: first + rest)
)
tensor_names = st.text(ALNUM + "_", min_size=1, max_size=1).flatmap(
    lambda first: st.text(ALNUM + "_.:/-", max_size=40).map(lambda rest: first + rest)
)
shapes = st.lists(st.integers(0, 4), max_size=4).map(tuple)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = WIRE_DTYPES[draw(st.sampled_from(sorted(WIRE_DTYPES)))]
    shape = draw(shapes)
    numel = 1
    for d in shape:
        numel *= d
    raw = draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize))
    flat = (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.empty(0, dtype=torch.uint8)
    )
    return flat.view(dtype).reshape(shape).clone()


@st.composite
def messages(draw: st.DrawFn) -> Message:
    header = MessageHeader(
        sender=draw(node_names),
        receiver=draw(node_names),
        method=draw(node_names),
        schema_hash=draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
        sequence=draw(st.integers(0, 2**63 - 1)),
    )
    return Message(
        header=header, tensors=draw(st.dictionaries(tensor_names, tensors(), max_size=4))
    )


def assert_rejected_or_decoded(data: bytes) -> None:
    """The property every decoder entry point must keep: MessageRejected or a Message."""
    try:
        decode_message(data)
    except MessageRejected as err:
        assert err.reason in REASONS


# ---------------------------------------------------------------------------------------------
# Round trip and interoperability with the safetensors library.


@FAST
@given(messages())
def test_decode_inverts_encode_bit_for_bit(message: Message) -> None:
    data = encode_message(message)

    decoded = decode_message(data)

    assert decoded == message
    assert encode_message(decoded) == data


@FAST
@given(messages())
def test_encoding_is_a_safetensors_file(message: Message) -> None:
    data = encode_message(message)

    loaded = safetensors.torch.load(data)

    assert set(loaded) == set(message.tensors)
    for name, tensor in message.tensors.items():
        assert Message(header=message.header, tensors={name: loaded[name]}) == Message(
            header=message.header, tensors={name: tensor}
        )


def _small_message(sequence: int = 3, **tensors: torch.Tensor) -> Message:
    tensors = tensors or {"y/w": torch.arange(6.0).reshape(3, 2), "y/b": torch.ones(2)}
    schema = MessageSchema.from_tensors("ecl-pdmm", tensors)
    header = MessageHeader(
        sender="N1", receiver="N2", method="ecl-pdmm", schema_hash=schema.digest, sequence=sequence
    )
    return Message(header=header, tensors=tensors)


def test_decodes_what_the_safetensors_library_writes() -> None:
    message = _small_message()
    metadata = {
        "format": "ecl-wire",
        "version": "1",
        "sender": "N1",
        "receiver": "N2",
        "method": "ecl-pdmm",
        "schema_hash": message.header.schema_hash,
        "sequence": "3",
    }

    data = safetensors.torch.save(dict(message.tensors), metadata=metadata)

    assert decode_message(data) == message


def test_encoding_is_deterministic_whatever_the_insertion_order_or_layout() -> None:
    weight = torch.arange(12.0).reshape(4, 3)
    first = _small_message(**{"y/a": weight, "y/b": torch.zeros(2)})
    second = _small_message(**{"y/b": torch.zeros(2), "y/a": weight.t().contiguous().t()})

    assert encode_message(first) == encode_message(second)
    assert len(encode_message(first)) % 8 == 0


def test_decoded_tensors_own_their_memory() -> None:
    data = bytearray(encode_message(_small_message()))

    decoded = decode_message(data)
    data[-8:] = b"\xff" * 8  # the sender's buffer is reused
    decoded.tensors["y/w"].add_(1.0)  # and the receiver writes into its tensors

    assert torch.equal(decoded.tensors["y/b"], torch.ones(2))
    assert torch.equal(decoded.tensors["y/w"], torch.arange(1.0, 7.0).reshape(3, 2))


@pytest.mark.parametrize(
    ("field", "value"),
    [("sender", "bad name"), ("receiver", ""), ("schema_hash", "ABC"), ("sequence", -1)],
)
def test_encoder_refuses_an_invalid_header(field: str, value: object) -> None:
    header = dataclasses.replace(_small_message().header, **{field: value})

    with pytest.raises(ValueError):
        encode_message(Message(header=header, tensors={}))


def test_encoder_refuses_a_tensor_named_like_the_metadata() -> None:
    message = dataclasses.replace(_small_message(), tensors={"__metadata__": torch.zeros(2)})

    with pytest.raises(ValueError, match="tensor name"):
        encode_message(message)


def test_encoder_refuses_a_dtype_not_on_the_wire() -> None:
    message = dataclasses.replace(
        _small_message(), tensors={"y/u8": torch.zeros(2, dtype=torch.uint8)}
    )

    with pytest.raises(ValueError, match="dtype"):
        encode_message(message)


# ---------------------------------------------------------------------------------------------
# Hostile bytes: anything at all, and targeted mutations of a valid encoding.


@HOSTILE
@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_rejected_never_crash(data: bytes) -> None:
    assert_rejected_or_decoded(data)


@HOSTILE
@given(st.binary(max_size=400))
def test_arbitrary_header_behind_a_consistent_length_is_rejected(text: bytes) -> None:
    assert_rejected_or_decoded(struct.pack("<Q", len(text)) + text)


VALID = encode_message(
    _small_message(**{"y/w": torch.arange(6.0).reshape(3, 2), "y/i": torch.arange(3)})
)


@HOSTILE
@given(st.integers(0, len(VALID) * 8 - 1))
def test_bit_flips_are_rejected_or_decoded(bit: int) -> None:
    data = bytearray(VALID)
    data[bit // 8] ^= 1 << (bit % 8)
    assert_rejected_or_decoded(bytes(data))


@HOSTILE
@given(st.integers(0, len(VALID) - 1), st.binary(max_size=64))
def test_truncations_and_extensions_are_rejected(cut: int, tail: bytes) -> None:
    with pytest.raises(MessageRejected):
        decode_message(VALID[:cut])
    if tail:
        with pytest.raises(MessageRejected):
            decode_message(VALID + tail)


@HOSTILE
@given(st.integers(0, 2**64 - 1))
def test_tampered_header_length_is_rejected(header_len: int) -> None:
    (true_len,) = struct.unpack_from("<Q", VALID)
    data = struct.pack("<Q", header_len) + VALID[8:]
    if header_len != true_len:
        with pytest.raises(MessageRejected):
            decode_message(data)


def _with_header(header: dict[str, object], payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def _valid_header() -> tuple[dict[str, object], bytes]:
    (length,) = struct.unpack_from("<Q", VALID)
    return json.loads(VALID[8 : 8 + length]), VALID[8 + length :]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@HOSTILE
@given(
    st.sampled_from(["__metadata__", "y/w", "y/i"]),
    st.sampled_from(["dtype", "shape", "data_offsets", "sequence", "sender", "version", "extra"]),
    json_values,
)
def test_tampered_json_fields_are_rejected_or_decoded(entry: str, key: str, value: object) -> None:
    header, payload = _valid_header()
    header[entry][key] = value  # type: ignore[index]
    assert_rejected_or_decoded(_with_header(header, payload))


@HOSTILE
@given(st.sampled_from(["y/w", "y/i"]), st.integers(-4, 80), st.integers(-4, 80))
def test_tampered_offsets_are_rejected_unless_they_tile_the_buffer(
    name: str, begin: int, end: int
) -> None:
    header, payload = _valid_header()
    original = header[name]["data_offsets"]  # type: ignore[index]
    header[name]["data_offsets"] = [begin, end]  # type: ignore[index]
    if [begin, end] == original:
        return
    with pytest.raises(MessageRejected, match="malformed"):
        decode_message(_with_header(header, payload))


def _metadata_with(**changes: object) -> bytes:
    header, payload = _valid_header()
    header["__metadata__"].update(changes)  # type: ignore[union-attr]
    return _with_header(header, payload)


HOSTILE_CASES = {
    "empty": b"",
    "short length": b"\x01\x00\x00",
    "header length 2**64-1": b"\xff" * 8 + b"{}",
    "header over the cap": struct.pack("<Q", MAX_HEADER_BYTES + 8) + b" " * (MAX_HEADER_BYTES + 8),
    "header past the end": struct.pack("<Q", 100) + b"{}",
    "not utf-8": struct.pack("<Q", 4) + b"\xff\xfe{}",
    "json array": _with_header([]),  # type: ignore[arg-type]
    "NaN constant": struct.pack("<Q", 3) + b"NaN",
    "deep nesting": struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,
    "huge integer": struct.pack("<Q", 5000) + b"9" * 5000,
    "duplicate key": struct.pack("<Q", 15) + b'{"a":1,"a":2} ',
    "no metadata": _with_header({}),
    "metadata not strings": _metadata_with(sequence=3),
    "extra metadata": _metadata_with(note="hi"),
    "wrong format": _metadata_with(format="pickle"),
    "future version": _metadata_with(version="2"),
    "negative sequence": _metadata_with(sequence="-1"),
    "leading zero sequence": _metadata_with(sequence="07"),
    "sequence 2**63": _metadata_with(sequence=str(2**63)),
    "unicode digits": _metadata_with(sequence="\u0663"),
    "sender with space": _metadata_with(sender="N 1"),
    "path-like sender": _metadata_with(sender="../N1"),
    "uppercase hash": _metadata_with(schema_hash="A" * 64),
    "dtype U8": _with_header(
        {**_valid_header()[0], "y/i": {"dtype": "U8", "shape": [24], "data_offsets": [0, 24]}}
    ),
    "shape overflow": _with_header(
        {
            "__metadata__": _valid_header()[0]["__metadata__"],
            "x": {"dtype": "F32", "shape": [2**62, 2**62, 0, 1], "data_offsets": [0, 0]},
        }
    ),
    "negative dim": _with_header(
        {
            "__metadata__": _valid_header()[0]["__metadata__"],
            "x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]},
        }
    ),
    "bool dim": _with_header(
        {
            "__metadata__": _valid_header()[0]["__metadata__"],
            "x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},
        },
        b"\x00" * 4,
    ),
    "overlap": _with_header(
        {
            "__metadata__": _valid_header()[0]["__metadata__"],
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\x00" * 12,
    ),
    "bad tensor name": _with_header(
        {
            "__metadata__": _valid_header()[0]["__metadata__"],
            "é": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
        },
        b"\x00" * 4,
    ),
}


@pytest.mark.parametrize("data", HOSTILE_CASES.values(), ids=HOSTILE_CASES.keys())
def test_hand_made_hostile_inputs_are_malformed(data: bytes) -> None:
    with pytest.raises(MessageRejected) as caught:
        decode_message(data)

    assert caught.value.reason == "malformed"


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(MessageRejected) as caught:
        decode_message(b"\xff" * 1025, max_bytes=1024)

    assert caught.value.reason == "too_large"


# ---------------------------------------------------------------------------------------------
# The gate: each reason on purpose; memory changes only on acceptance; restarts.

SCHEMA = MessageSchema.from_tensors("ecl-pdmm", _small_message().tensors)


def _gate(**kwargs: object) -> MessageGate:
    return MessageGate(node="N2", peers=["N1", "N3"], schema=SCHEMA, **kwargs)  # type: ignore[arg-type]


def _bytes(
    sequence: int = 3, tensors: dict[str, torch.Tensor] | None = None, **header: object
) -> bytes:
    base = _small_message(sequence)
    fields = {"schema_hash": SCHEMA.digest, **header}
    message_header = dataclasses.replace(base.header, **fields)  # type: ignore[arg-type]
    return encode_message(
        Message(header=message_header, tensors=base.tensors if tensors is None else tensors)
    )


W, B = torch.arange(6.0).reshape(3, 2), torch.ones(2)
GATE_CASES = {
    "unknown_sender": _bytes(sender="N9"),
    "wrong_receiver": _bytes(receiver="N3"),
    "wrong_method": _bytes(method="gossip"),
    "wrong_schema": _bytes(schema_hash="0" * 64),
    "wrong_shape": _bytes(tensors={"y/w": W.reshape(2, 3), "y/b": B}),
    "wrong_dtype": _bytes(tensors={"y/w": W.double(), "y/b": B}),
    "missing_tensor": _bytes(tensors={"y/w": W}),
    "unexpected_tensor": _bytes(tensors={"y/w": W, "y/b": B, "y/extra": B}),
    "non_finite": _bytes(tensors={"y/w": W, "y/b": torch.tensor([1.0, float("nan")])}),
    "malformed": b"\x00" * 40,
}


@pytest.mark.parametrize("reason", GATE_CASES)
def test_gate_rejects_each_reason_and_counts_it(reason: str) -> None:
    gate = _gate()

    with pytest.raises(MessageRejected) as caught:
        gate.accept(GATE_CASES[reason])

    assert caught.value.reason == reason
    assert gate.rejections[reason] == 1
    assert sum(gate.rejections.values()) == 1
    assert gate.state_dict()["last_sequence"] == {}


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_gate_rejects_every_non_finite_float(value: float, dtype: torch.dtype) -> None:
    tensors = {
        "y/w": torch.zeros(3, 2, dtype=dtype),
        "y/b": torch.tensor([0.0, value], dtype=dtype),
    }
    schema = MessageSchema.from_tensors("ecl-pdmm", tensors)
    gate = MessageGate(node="N2", peers=["N1"], schema=schema)

    with pytest.raises(MessageRejected, match="non_finite"):
        gate.accept(_bytes(tensors=tensors, schema_hash=schema.digest))


def test_gate_default_size_limit_follows_the_schema() -> None:
    gate = _gate()
    padded = bytearray(_bytes())
    padded += b" " * (gate.max_bytes - len(padded) + 1)

    with pytest.raises(MessageRejected, match="too_large"):
        gate.accept(bytes(padded))


def test_gate_rejects_replayed_and_stale_sequences_per_sender() -> None:
    gate = _gate()
    gate.accept(_bytes(sequence=5))
    gate.accept(_bytes(sequence=1, sender="N3"))  # each sender has its own sequence

    with pytest.raises(MessageRejected, match="replayed"):
        gate.accept(_bytes(sequence=5))
    with pytest.raises(MessageRejected, match="stale"):
        gate.accept(_bytes(sequence=4))

    assert gate.accept(_bytes(sequence=9)).header.sequence == 9
    assert gate.accepted == 3
    assert gate.rejections["replayed"] == gate.rejections["stale"] == 1


def test_rejected_message_does_not_advance_the_sequence() -> None:
    gate = _gate()
    gate.accept(_bytes(sequence=5))

    with pytest.raises(MessageRejected, match="non_finite"):
        gate.accept(GATE_CASES["non_finite"].replace(b'"sequence":"3"', b'"sequence":"9"'))

    assert gate.state_dict()["last_sequence"] == {"N1": 5}
    assert gate.accept(_bytes(sequence=6)).header.sequence == 6


def test_gate_state_survives_a_restart_and_keeps_rejecting_replays() -> None:
    gate = _gate()
    gate.accept(_bytes(sequence=7))
    saved = json.loads(json.dumps(gate.state_dict()))

    restarted = _gate()
    restarted.load_state_dict(saved)

    with pytest.raises(MessageRejected, match="replayed"):
        restarted.accept(_bytes(sequence=7))
    assert restarted.accept(_bytes(sequence=8)).header.sequence == 8


@pytest.mark.parametrize(
    "state",
    [
        {"node": "N5", "last_sequence": {}},
        {"node": "N2"},
        {"node": "N2", "last_sequence": {"N1": -1}},
    ],
)
def test_gate_refuses_a_foreign_or_corrupt_state(state: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _gate().load_state_dict(state)


def test_gate_decodes_the_same_message_as_decode_message() -> None:
    data = _bytes(sequence=11)

    assert _gate().accept(data) == decode_message(data)


# ---------------------------------------------------------------------------------------------
# Sender-side sequence numbers across crashes.


def test_restored_counter_reuses_sequences_but_a_new_boot_epoch_does_not() -> None:
    gate = _gate()
    sender = SequenceCounter(boot_epoch=0)
    checkpoint = None
    for step in range(10):
        if step == 6:
            checkpoint = sender.state_dict()  # the checkpoint lags what is sent next
        gate.accept(_bytes(sequence=sender.next()))

    # Crash. Restoring the checkpoint alone would resend 6 .. 9: the receiver refuses them.
    naive = SequenceCounter(boot_epoch=0)
    naive.load_state_dict(checkpoint)  # type: ignore[arg-type]
    with pytest.raises(MessageRejected, match="stale"):
        gate.accept(_bytes(sequence=naive.next()))

    # The node persisted boot epoch 0 at its first start; at restart it persists 1 first.
    rebooted = SequenceCounter(boot_epoch=checkpoint["boot_epoch"] + 1)  # type: ignore[index]
    first = rebooted.next()
    assert first == 1 << EPOCH_SHIFT
    assert gate.accept(_bytes(sequence=first)).header.sequence == first


def test_sequences_stay_below_2_63_and_overflow_loudly() -> None:
    last = SequenceCounter(boot_epoch=MAX_BOOT_EPOCH, counter=2**EPOCH_SHIFT - 1)

    assert last.next() == 2**63 - 1
    with pytest.raises(OverflowError):
        last.next()
    with pytest.raises(ValueError):
        SequenceCounter(boot_epoch=MAX_BOOT_EPOCH + 1)


@FAST
@given(st.integers(0, 50), st.integers(0, 50), st.integers(1, 5))
def test_sequences_increase_across_boots(epoch: int, counter: int, steps: int) -> None:
    before = SequenceCounter(boot_epoch=epoch, counter=counter)
    after = SequenceCounter(boot_epoch=epoch + 1)
    sent = [before.next() for _ in range(steps)]

    assert sent == sorted(set(sent))
    assert after.next() > sent[-1]


def test_gate_rejects_a_header_that_names_another_peer_than_the_channel() -> None:
    gate = _gate()

    with pytest.raises(MessageRejected, match="unknown_sender"):
        gate.accept(_bytes(sender="N3"), authenticated_sender="N1")

    assert gate.accept(_bytes(sender="N1"), authenticated_sender="N1").header.sender == "N1"


@FAST
@given(
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    st.integers(0, 5000),
    st.lists(
        st.tuples(
            st.integers(0, 4999), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e4])
        ),
        max_size=3,
    ),
)
def test_all_finite_agrees_with_isfinite(dtype: torch.dtype, size: int, specials: list) -> None:
    tensor = torch.linspace(-1, 1, size).to(dtype)
    for position, value in specials:
        if position < size:
            tensor[position] = value

    assert all_finite(tensor) == bool(torch.isfinite(tensor).all())
