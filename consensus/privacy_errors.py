"""Privacy errors shared by the config, the calibration and the transports (no heavy imports)."""

from __future__ import annotations


class PrivacyConfigError(ValueError):
    """A privacy setting that cannot give a true guarantee; the message says what to change."""


class PrivacyBudgetExhausted(RuntimeError):
    """The next release would spend more epsilon than the budget allows; the node stops sending.

    Raised by `outgoing(peer)` of an algorithm with exchange privacy: the caller sends nothing
    in that direction and still delivers the other one (docs/privacy.md, "Budget").
    """
