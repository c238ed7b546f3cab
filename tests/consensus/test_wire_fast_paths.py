"""The gate's fast paths: one copy for a message's tensors, one finiteness pass over them."""

from __future__ import annotations

import pytest
import torch

from consensus.schema import MessageSchema
from consensus.wire import Message, MessageGate, MessageHeader, MessageRejected, encode_message
from consensus.wire.gate import _FINITE_SLICE, all_finite, first_non_finite


def _encoded(tensors: dict[str, torch.Tensor]) -> tuple[bytes, MessageSchema]:
    schema = MessageSchema.from_tensors("ecl-pdmm", tensors)
    header = MessageHeader(
        sender="N1", receiver="N2", method="ecl-pdmm", schema_hash=schema.digest, sequence=1
    )
    return encode_message(Message(header=header, tensors=tensors)), schema


def test_a_nan_past_the_first_slice_is_found() -> None:
    tensor = torch.zeros(2 * _FINITE_SLICE + 3)
    assert all_finite(tensor)
    tensor[_FINITE_SLICE + 5] = float("nan")
    assert not all_finite(tensor)


@pytest.mark.parametrize("bad", ["y/a", "y/c"])
def test_the_gate_names_the_tensor_that_holds_the_inf(bad: str) -> None:
    tensors = {"y/a": torch.ones(3, 2), "y/b": torch.zeros(5), "y/c": torch.ones(4)}
    tensors[bad][-1] = float("inf")
    data, schema = _encoded(tensors)

    with pytest.raises(MessageRejected, match=f"non_finite: tensor '{bad}'"):
        MessageGate(node="N2", peers=["N1"], schema=schema).accept(data)


def test_mixed_dtypes_decode_to_the_sent_values_and_own_their_memory() -> None:
    # a float16 tensor of 3 elements (6 bytes) puts the next float32 tensor off 4-byte alignment
    tensors = {
        "y/a": torch.tensor([1.0, -2.0, 3.5], dtype=torch.float16),
        "y/b": torch.tensor([4.0, 5.0]),
        "y/c": torch.tensor([6.0], dtype=torch.float64),
    }
    data, schema = _encoded(tensors)

    message = MessageGate(node="N2", peers=["N1"], schema=schema).accept(data)
    message.tensors["y/a"].add_(1)

    assert torch.equal(message.tensors["y/b"], tensors["y/b"])
    assert torch.equal(message.tensors["y/c"], tensors["y/c"])
    assert first_non_finite(message.tensors) is None
