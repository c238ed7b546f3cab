"""Sequence numbers: boot epoch in the high bits, a per-boot counter below; the receiver's rules."""

from __future__ import annotations

from collections.abc import Mapping

from consensus.wire.codec import MessageRejected

EPOCH_SHIFT = 32  # sequence = boot_epoch * 2**32 + counter
MAX_BOOT_EPOCH = 2**31 - 1  # keeps every sequence below 2**63
# How many boot epochs a sender may move ahead of the last sequence accepted from it (or of
# epoch 0, for its first message). Honest senders move one epoch per start; a million covers
# years of crash loops and the restore procedure (hospital-it.md, sec. 15), while one message
# with an absurd number (say 2**62) can no longer lock the edge for good.
MAX_EPOCH_JUMP = 2**20


def boot_epoch_of(sequence: int) -> int:
    """The boot epoch a sequence number was sent in."""
    return sequence >> EPOCH_SHIFT


def check_sequence(last: int | None, sequence: int) -> None:
    """Raise MessageRejected unless `sequence` may follow `last` (None: nothing accepted yet).

    `replayed`: equal; `stale`: lower; `sequence_jump`: more than MAX_EPOCH_JUMP boot epochs
    ahead. Within that window a new boot epoch is always accepted whatever the counter, so a
    sender's restart resets the counter part (docs/wire-format.md, section 6).
    """
    if last is not None and sequence == last:
        raise MessageRejected("replayed", f"sequence {sequence} already accepted")
    if last is not None and sequence < last:
        raise MessageRejected("stale", f"sequence {sequence} < last accepted {last}")
    base = 0 if last is None else boot_epoch_of(last)
    if boot_epoch_of(sequence) - base > MAX_EPOCH_JUMP:
        raise MessageRejected(
            "sequence_jump",
            f"boot epoch {boot_epoch_of(sequence)} is more than {MAX_EPOCH_JUMP} ahead of "
            f"{base}; if the sender really restarted that often, reset the edge "
            "(hospital-node reset-edge)",
        )


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
