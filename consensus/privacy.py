"""Differential privacy of exchanged models: clipped Gaussian release; config and epsilon math
re-exported from the modules that hold them (privacy_config, privacy_calibration)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from consensus.privacy_calibration import (  # noqa: F401 (re-exported)
    EXCHANGE_RDP_ORDERS,
    EXCHANGE_SENSITIVITY_FACTOR,
    calibrate_noise_multiplier,
    gaussian_epsilon,
    noise_multiplier_from_opacus,
    opacus_noise_multiplier,
)
from consensus.privacy_config import (  # noqa: F401 (re-exported: the config lives without Opacus)
    ACCOUNTANTS,
    MODES,
    PrivacyConfig,
    default_delta,
    is_positive,
)
from consensus.privacy_errors import (  # noqa: F401 (re-exported)
    PrivacyBudgetExhausted,
    PrivacyConfigError,
)


def _check_same_tensors(current: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> None:
    if set(current) != set(reference):
        missing = sorted(set(current) - set(reference))
        extra = sorted(set(reference) - set(current))
        raise ValueError(
            f"current and reference must hold the same tensors: no reference for {missing}, "
            f"reference has unknown {extra}"
        )
    for name, tensor in current.items():
        if tensor.shape != reference[name].shape:
            raise ValueError(
                f"{name}: current shape {tuple(tensor.shape)} != reference shape "
                f"{tuple(reference[name].shape)}"
            )


def clip_difference(
    current: Mapping[str, Tensor], reference: Mapping[str, Tensor], clip_norm: float
) -> tuple[dict[str, Tensor], float]:
    """(current - reference) scaled as a whole to global L2 norm <= clip_norm, and its norm before.

    Computed in float64 so the bound holds to float64 precision; keys in sorted order.
    """
    if not is_positive(clip_norm):
        raise PrivacyConfigError(f"clip_norm must be a positive number, got {clip_norm}")
    _check_same_tensors(current, reference)
    difference = {
        name: current[name].detach().to(torch.float64)
        - reference[name].detach().to(device=current[name].device, dtype=torch.float64)
        for name in sorted(current)
    }
    squares = sum(float(torch.sum(d * d)) for d in difference.values())
    norm = math.sqrt(squares)
    scale = 1.0 if norm <= clip_norm else clip_norm / norm
    return {name: d * scale for name, d in difference.items()}, norm


def gaussian_release(
    current: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    *,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """released = reference + clip(current - reference, C) + N(0, (sigma C)^2), per tensor.

    The only data-dependent value a node may send when exchange privacy is on. Noise is drawn
    from `generator` tensor by tensor in sorted-name order, in float64, then the release is
    cast to each reference tensor's dtype and device (post-processing). The generator's seed
    must be secret: whoever knows it can subtract the noise.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    clipped, _ = clip_difference(current, reference, clip_norm)
    std = noise_multiplier * clip_norm
    released = {}
    for name, step in clipped.items():
        base = reference[name].detach()
        value = base.to(device=step.device, dtype=torch.float64) + step
        if std > 0:
            noise = torch.randn(
                step.shape, generator=generator, dtype=torch.float64, device=generator.device
            )
            value = value + std * noise.to(step.device)
        released[name] = value.to(device=base.device, dtype=base.dtype)
    return released
