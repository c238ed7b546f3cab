"""The privacy command-line flags, one set for `ecl-sim` and `hospital-node run`."""

from __future__ import annotations

import argparse
from typing import Any

from consensus.privacy_config import ACCOUNTANTS, MODES

# flag dest -> PrivacyConfig field
_FIELDS = {
    "dp": "mode",
    "clip": "clip_norm",
    "delta": "delta",
    "accountant": "accountant",
    "planned_releases": "planned_releases",
    "planned_epochs": "planned_epochs",
    "epsilon_budget": "epsilon_budget",
}


def add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    """--dp and its settings; they override the [privacy] table (docs/privacy.md)."""
    group = parser.add_argument_group("differential privacy (docs/privacy.md; overrides [privacy])")
    group.add_argument(
        "--dp",
        choices=MODES,
        help="exchange: noise on every model release (protects the whole site); "
        "dpsgd: per-example clipping and noise in every step (protects one image)",
    )
    amount = group.add_mutually_exclusive_group()
    amount.add_argument(
        "--epsilon", type=float, metavar="E", help="target epsilon (noise calibrated to it)"
    )
    amount.add_argument(
        "--noise-multiplier", type=float, metavar="S", help="sigma: noise std = sigma x clip norm"
    )
    group.add_argument(
        "--clip", type=float, metavar="C", help="clip norm: per release (exchange) or per example"
    )
    group.add_argument("--delta", type=float, help="delta; default min(1e-5, 1/n) per site")
    group.add_argument("--accountant", choices=ACCOUNTANTS, help="Opacus accountant")
    group.add_argument(
        "--planned-releases",
        type=int,
        metavar="K",
        help="exchange with --epsilon: releases the noise must cover "
        "(simulation default per node: steps x peers / exchange_interval)",
    )
    group.add_argument(
        "--planned-epochs",
        type=float,
        metavar="P",
        help="dpsgd with --epsilon: passes over the training split the noise must cover "
        "(default: the training.steps budget)",
    )
    group.add_argument(
        "--epsilon-budget", type=float, help="exchange: stop sending beyond this (default E)"
    )


def privacy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """{"privacy": {...}} of the flags given; --epsilon and --noise-multiplier clear each other
    (a flag must win over the other one set in the TOML file)."""
    privacy = {
        field: getattr(args, dest)
        for dest, field in _FIELDS.items()
        if getattr(args, dest, None) is not None
    }
    if getattr(args, "epsilon", None) is not None:
        privacy |= {"target_epsilon": args.epsilon, "noise_multiplier": None}
    if getattr(args, "noise_multiplier", None) is not None:
        privacy |= {"noise_multiplier": args.noise_multiplier, "target_epsilon": None}
    return {"privacy": privacy} if privacy else {}
