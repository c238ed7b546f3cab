"""Privacy errors that transports catch; kept free of heavy imports (no Opacus)."""

from __future__ import annotations


class PrivacyBudgetExhausted(RuntimeError):
    """The next release would spend more epsilon than the budget allows; the node stops sending.

    Raised by `outgoing(peer)` of an algorithm with exchange privacy: the caller sends nothing
    in that direction and still delivers the other one (docs/privacy.md, "Budget").
    """
