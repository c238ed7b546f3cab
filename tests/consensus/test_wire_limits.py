"""The wire's limits: the schema-derived size cap and the bounds on sequence numbers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.schema import MessageSchema
from consensus.wire import (
    EPOCH_SHIFT,
    MAX_EPOCH_JUMP,
    MAX_NAME_LENGTH,
    MAX_SEQUENCE,
    Message,
    MessageGate,
    MessageHeader,
    MessageRejected,
    check_sequence,
    encode_message,
    message_size_limit,
)

TENSORS = {
    "y/w": torch.zeros(3, 2),
    "y/b": torch.zeros(2),
    "y/n": torch.zeros((), dtype=torch.int64),
}
SCHEMA = MessageSchema.from_tensors("ecl-pdmm", TENSORS)


def _encode(tensors: dict[str, torch.Tensor], name: str, sequence: int) -> bytes:
    schema = MessageSchema.from_tensors("ecl-pdmm", tensors)
    header = MessageHeader(sender=name, receiver=name, method="ecl-pdmm",
                           schema_hash=schema.digest, sequence=sequence)  # fmt: skip
    return encode_message(Message(header=header, tensors=tensors))


def test_size_limit_is_the_largest_message_the_schema_allows_plus_the_margin() -> None:
    longest = _encode(TENSORS, "x" * MAX_NAME_LENGTH, MAX_SEQUENCE)
    bound = message_size_limit(SCHEMA, margin=0)

    assert len(longest) <= bound < len(longest) + 8  # at most the alignment padding apart
    assert message_size_limit(SCHEMA) == bound + 4096
    assert MessageGate(node="N1", peers=["N2"], schema=SCHEMA).max_bytes == bound + 4096


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=1, max_size=5),
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True),
    sequence=st.integers(0, MAX_SEQUENCE),
)
def test_no_valid_message_exceeds_its_schemas_limit(shapes, name: str, sequence: int) -> None:
    tensors = {f"y/t{i}": torch.zeros(shape) for i, shape in enumerate(shapes)}
    schema = MessageSchema.from_tensors("ecl-pdmm", tensors)
    assert len(_encode(tensors, name, sequence)) <= message_size_limit(schema, margin=0)


def seq(epoch: int, counter: int = 0) -> int:
    return (epoch << EPOCH_SHIFT) + counter


@pytest.mark.parametrize(
    ("last", "sequence", "reason"),
    [
        (None, seq(MAX_EPOCH_JUMP, 5), None),  # a first message: up to the bound from epoch 0
        (None, seq(MAX_EPOCH_JUMP + 1), "sequence_jump"),
        (None, 2**62, "sequence_jump"),
        (seq(5, 7), seq(5, 8), None),
        (seq(5, 7), seq(5, 7), "replayed"),
        (seq(5, 7), seq(5, 6), "stale"),
        (seq(5, 2**32 - 1), seq(6, 0), None),  # a fresh boot epoch resets the counter part
        (seq(5, 7), seq(5 + MAX_EPOCH_JUMP, 2**32 - 1), None),
        (seq(5, 7), seq(6 + MAX_EPOCH_JUMP), "sequence_jump"),
    ],
)
def test_sequence_rules(last: int | None, sequence: int, reason: str | None) -> None:
    if reason is None:
        check_sequence(last, sequence)
    else:
        with pytest.raises(MessageRejected) as caught:
            check_sequence(last, sequence)
        assert caught.value.reason == reason


def test_a_jump_is_refused_counted_and_remembered_nowhere() -> None:
    gate = MessageGate(node="N1", peers=["N2"], schema=SCHEMA)
    gate.accept(_bytes_for_gate(seq(3)))

    with pytest.raises(MessageRejected, match="sequence_jump"):
        gate.accept(_bytes_for_gate(2**62))

    assert gate.rejections["sequence_jump"] == 1 and gate.last_sequence("N2") == seq(3)
    assert gate.accept(_bytes_for_gate(seq(4))).header.sequence == seq(4)


def _bytes_for_gate(sequence: int) -> bytes:
    header = MessageHeader(sender="N2", receiver="N1", method="ecl-pdmm",
                           schema_hash=SCHEMA.digest, sequence=sequence)  # fmt: skip
    return encode_message(Message(header=header, tensors=TENSORS))
