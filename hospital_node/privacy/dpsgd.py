"""Record-level DP-SGD, one mechanism for nodes and simulation: Poisson batches, clip, noise.

Per-example gradients come from torch.func (`training.functional`), for one node or a
vmapped stack of hospitals alike; each is clipped to C, the clipped sum gets Gaussian noise
N(0, sigma^2 C^2 I) from the hospital's own generator and is divided by the expected batch
size q n (as Opacus's DPOptimizer does for Poisson sampling). Batches are Poisson-sampled
(`training.batches.PoissonSampler`), so Opacus's sampled-Gaussian accountant gives a bound,
not an approximation. Opacus validates the model and does the accounting; Opacus's own
GradSampleModule cannot differentiate a vmapped stack of models, hence this small mechanism.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import Tensor, nn

from consensus.privacy_config import PrivacyConfig, PrivacyConfigError
from hospital_node.privacy.accounting import RecordLevelPrivacy

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CLIP_MARGIN = 1e-6  # relative; see clip_per_example


def _offending_layers(model: nn.Module) -> list[str]:
    names = []
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is not None and validator(module):
            names.append(name or type(module).__name__)
    # Frozen BatchNorm still mixes examples in training mode; Opacus only checks trainable ones.
    names += [n for n, m in model.named_modules() if isinstance(m, _BATCH_NORMS) and n not in names]
    return names


def validate_model(model: nn.Module) -> None:
    """Raise PrivacyConfigError naming the layers Opacus cannot make record-level private."""
    errors = ModuleValidator.validate(model, strict=False)
    layers = _offending_layers(model)
    if not errors and not layers:
        return
    reasons = "; ".join(sorted({str(e).split(".")[0] for e in errors}))
    hints = []
    if layers:
        hints.append(
            f"replace the offending layers {layers} (BatchNorm mixes the examples of a batch: "
            "use GroupNorm (ModelConfig norm) or ModuleValidator.fix)"
        )
    if not model.training:
        hints.append("put the model in training mode (model.train())")
    raise PrivacyConfigError(f"model cannot be trained with DP-SGD ({reasons}): {'; '.join(hints)}")


def sample_rate(batch_size: int, n_records: int) -> float:
    """Poisson sampling rate q = batch_size / n (capped at 1): the expected batch is batch_size."""
    if n_records < 1:
        raise PrivacyConfigError("DP-SGD needs at least one training record")
    return min(1.0, batch_size / n_records)


def planned_steps(config: PrivacyConfig, *, steps: int, rate: float) -> int:
    """DP-SGD steps the noise must cover: `planned_epochs` / q if given, else the step budget."""
    if config.planned_epochs is not None:
        return max(1, math.ceil(config.planned_epochs / rate))
    if steps < 1:
        raise PrivacyConfigError(
            "target_epsilon with dpsgd needs the planned length of training: set "
            "privacy.planned_epochs (--planned-epochs) or training.steps"
        )
    return steps


def dpsgd_noise_multiplier(
    config: PrivacyConfig, *, sample_rate: float, delta: float, steps: int
) -> float:
    """Opacus's calibration of sigma to `config.target_epsilon` over `steps` Poisson steps."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Opacus: "optimal order is largest"
            sigma = get_noise_multiplier(
                target_epsilon=float(config.target_epsilon),
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=config.accountant,
            )
    except ValueError as error:
        raise PrivacyConfigError(
            f"target_epsilon={config.target_epsilon} over {steps} DP-SGD steps is out of "
            f"reach ({error}); raise the target or train less"
        ) from error
    return float(sigma)


def clip_per_example(per_example: Mapping[str, Tensor], clip_norm: float) -> dict[str, Tensor]:
    """Scale each example's gradient [K, B, ...] (all tensors together) to L2 norm <= clip_norm.

    The bound is the privacy proof's sensitivity, so it must survive rounding: norms are taken
    in float64 and examples are scaled to C (1 - 1e-6), a margin above float32's rounding of
    the product (Opacus's norm + 1e-6 can end an ulp above C).
    """
    squares = [(g.double().flatten(2) ** 2).sum(-1) for g in per_example.values()]
    norms = torch.stack(squares).sum(0).sqrt()  # [K, B]
    bound = clip_norm * (1 - _CLIP_MARGIN)
    factor = torch.where(norms > bound, bound / norms, torch.ones_like(norms))
    return {
        name: g * factor.to(g.dtype).view(*factor.shape, *([1] * (g.ndim - 2)))
        for name, g in per_example.items()
    }


@dataclass
class DpsgdMechanism:
    """One hospital's DP-SGD: its noise, its generator and its accountant (RecordLevelPrivacy)."""

    privacy: RecordLevelPrivacy
    generator: torch.Generator
    expected_batch_size: float

    @classmethod
    def from_config(
        cls,
        config: PrivacyConfig,
        *,
        n_records: int,
        batch_size: int,
        steps: int,
        generator: torch.Generator,
        group_size: int = 1,
    ) -> DpsgdMechanism:
        """sigma from the config (calibrated over the planned steps), Opacus's accountant."""
        if config.mode != "dpsgd":
            raise PrivacyConfigError(f"DP-SGD needs privacy mode 'dpsgd', got {config.mode!r}")
        rate = sample_rate(batch_size, n_records)
        delta = config.resolve_delta(n_records)
        if config.noise_multiplier is not None:
            sigma = float(config.noise_multiplier)
        else:
            plan = planned_steps(config, steps=steps, rate=rate)
            sigma = dpsgd_noise_multiplier(config, sample_rate=rate, delta=delta, steps=plan)
        privacy = RecordLevelPrivacy(
            accountant=create_accountant(mechanism=config.accountant),
            noise_multiplier=sigma,
            clip_norm=float(config.clip_norm),
            sample_rate=rate,
            delta=delta,
            group_size=group_size,
        )
        return cls(privacy, generator, rate * n_records)

    def noise_like(self, tensor: Tensor) -> Tensor:
        """N(0, sigma^2 C^2) noise of one gradient tensor's shape from this hospital's stream."""
        std = self.privacy.noise_multiplier * self.privacy.clip_norm
        return std * torch.randn(tensor.shape, generator=self.generator)

    def account_step(self) -> None:
        self.privacy.accountant.step(
            noise_multiplier=self.privacy.noise_multiplier, sample_rate=self.privacy.sample_rate
        )


def private_gradients(
    per_example: Mapping[str, Tensor], mask: Tensor, mechanisms: Sequence[DpsgdMechanism]
) -> dict[str, Tensor]:
    """DP-SGD gradients [K, ...] of K hospitals: (sum_b mask clip(g_kb, C) + noise_k) / (q n)_k.

    `per_example` holds [K, B, ...] gradients of padded batches; `mask` [K, B] is 1 for a real
    example and 0 for padding (Poisson batches differ in size). Hospital k's noise comes from
    its own generator, one tensor at a time in sorted-name order, so it does not depend on which
    other hospitals share the computation. Each hospital's accountant takes one step.
    """
    clip_norm = mechanisms[0].privacy.clip_norm
    clipped = clip_per_example(per_example, clip_norm)
    out = {}
    for name in sorted(clipped):
        grad = clipped[name]
        summed = (grad * mask.to(grad.dtype).view(*mask.shape, *([1] * (grad.ndim - 2)))).sum(1)
        noise = torch.stack([m.noise_like(summed[0]) for m in mechanisms])
        scale = torch.tensor([m.expected_batch_size for m in mechanisms], dtype=summed.dtype)
        divisor = scale.view(-1, *([1] * (summed.ndim - 1))).to(summed.device)
        out[name] = (summed + noise.to(device=summed.device, dtype=summed.dtype)) / divisor
    for mechanism in mechanisms:
        mechanism.account_step()
    return out
