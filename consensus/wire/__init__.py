"""Wire format of consensus messages: safetensors bytes, decoded without pickle, gated per node.

`codec` encodes and structurally decodes a message, `gate` holds every semantic check a node
makes, `sequence` the sequence numbers and their rules (docs/wire-format.md).
"""

from consensus.wire.codec import (
    DEFAULT_MAX_BYTES,
    ENTRY_KEYS,
    HEADER_KEYS,
    HEADER_MARGIN,
    MAX_HEADER_BYTES,
    MAX_NAME_LENGTH,
    MAX_NDIM,
    MAX_SEQUENCE,
    REASONS,
    WIRE_FORMAT,
    WIRE_VERSION,
    Message,
    MessageHeader,
    MessageRejected,
    decode_message,
    encode_message,
    message_size_limit,
)
from consensus.wire.gate import MessageGate, all_finite, forget_sender
from consensus.wire.sequence import (
    EPOCH_SHIFT,
    MAX_BOOT_EPOCH,
    MAX_EPOCH_JUMP,
    SequenceCounter,
    boot_epoch_of,
    check_sequence,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ENTRY_KEYS",
    "EPOCH_SHIFT",
    "HEADER_KEYS",
    "HEADER_MARGIN",
    "MAX_BOOT_EPOCH",
    "MAX_EPOCH_JUMP",
    "MAX_HEADER_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_NDIM",
    "MAX_SEQUENCE",
    "REASONS",
    "WIRE_FORMAT",
    "WIRE_VERSION",
    "Message",
    "MessageGate",
    "MessageHeader",
    "MessageRejected",
    "SequenceCounter",
    "all_finite",
    "boot_epoch_of",
    "check_sequence",
    "decode_message",
    "encode_message",
    "forget_sender",
    "message_size_limit",
]
