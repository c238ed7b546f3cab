"""Record-level DP-SGD with Opacus: validated model, Poisson sampling, and a truthful epsilon."""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import IAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from consensus.privacy import PrivacyConfig, PrivacyConfigError

STATE_VERSION = 1
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_SMALLEST_LOG_DELTA = -690.0  # exp(-690) ~ 1e-300, near the smallest positive float


def max_images_per_patient(patient_ids: Iterable[str]) -> int:
    """The group size for patient-level privacy: most training images any one patient has."""
    counts = Counter(patient_ids)
    return max(counts.values(), default=1)


@functools.lru_cache(maxsize=64)
def _step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one sampled Gaussian step at Opacus's default orders (read-only, cached).

    Opacus's `compute_rdp(steps=k)` is exactly k times this vector, and evaluating it takes
    about 0.3 s (fractional orders), so a node that shows its epsilon every few seconds
    computes it once per (noise multiplier, sample rate) instead of at every call.
    """
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders
    )
    rdp.setflags(write=False)
    return rdp


def history_rdp(history: Iterable[tuple[float, float, int]]) -> np.ndarray:
    """RDP at Opacus's default orders of a history of (noise multiplier, sample rate, steps);
    the same numbers as RDPAccountant, which sums compute_rdp(steps=k) = k x one step."""
    return sum(_step_rdp(float(nm), float(q)) * int(k) for nm, q, k in history)


def rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    """epsilon at `delta` from RDP values at Opacus's default orders (Opacus's conversion)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
        orders = RDPAccountant.DEFAULT_ALPHAS
        return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def _rdp_curve(history: list[tuple[float, float, int]]) -> Callable[[float], float]:
    """delta -> record-level epsilon by Opacus's RDP analysis (RDP computed once)."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = history_rdp(history)

    def epsilon(delta: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
            return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])

    return epsilon


def group_epsilon(
    history: list[tuple[float, float, int]], *, group_size: int, delta: float
) -> float:
    """Epsilon at `delta` for a group of `group_size` records (e.g. one patient's images).

    Group privacy: an (e, d)-DP mechanism is (k e, k exp((k-1) e) d)-DP for data sets that
    differ in k records. The record-level curve e(d_r) holds for every d_r, so we pick the
    largest d_r with k exp((k-1) e(d_r)) d_r <= delta (bisection on log(1/d_r); the left side
    is concave in it) and return k e(d_r). Uses Opacus's RDP curve (valid whatever accountant
    the headline figure uses). Returns inf when no d_r above 1e-300 fits.
    """
    if group_size < 1:
        raise PrivacyConfigError(f"group_size must be >= 1, got {group_size}")
    if not history:
        return 0.0
    curve = _rdp_curve(history)
    if group_size == 1:
        return curve(delta)
    k = group_size

    def excess(log_inv_delta_r: float) -> tuple[float, float]:
        eps_r = curve(math.exp(-log_inv_delta_r))
        return math.log(k) + (k - 1) * eps_r - log_inv_delta_r - math.log(delta), eps_r

    infeasible = math.log(k / delta)  # there excess = (k-1) e > 0
    step, feasible = 1.0, None
    while feasible is None and infeasible + step <= -_SMALLEST_LOG_DELTA:
        if excess(infeasible + step)[0] <= 0:
            feasible = infeasible + step
        else:
            infeasible, step = infeasible + step, step * 2
    if feasible is None:
        return math.inf
    for _ in range(40):
        middle = (infeasible + feasible) / 2
        if excess(middle)[0] <= 0:
            feasible = middle
        else:
            infeasible = middle
    return k * excess(feasible)[1]


class RecordLevelPrivacy:
    """Epsilon of DP-SGD so far (Opacus's accountant, advanced by every optimizer step).

    The unit is one training record (one image). A patient with up to `group_size` images
    is covered by the weaker group-privacy figure `patient_epsilon()`.
    """

    def __init__(
        self,
        *,
        accountant: IAccountant,
        noise_multiplier: float,
        clip_norm: float,
        sample_rate: float,
        delta: float,
        group_size: int = 1,
    ) -> None:
        if group_size < 1:
            raise PrivacyConfigError(f"group_size must be >= 1, got {group_size}")
        self.accountant = accountant
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.group_size = int(group_size)

    @property
    def steps(self) -> int:
        return sum(int(steps) for _, _, steps in self.accountant.history)

    def epsilon(self) -> float:
        """Record-level epsilon at `delta` spent so far (RDP: Opacus's figure, from cached
        per-step RDP; PRV: Opacus's accountant)."""
        if not self.accountant.history:
            return 0.0
        if self.accountant.mechanism() == "rdp":
            return rdp_epsilon(history_rdp(self.accountant.history), self.delta)
        return float(self.accountant.get_epsilon(delta=self.delta))

    def patient_epsilon(self) -> float:
        """Epsilon at `delta` for one patient with up to `group_size` images (group privacy)."""
        return group_epsilon(self.accountant.history, group_size=self.group_size, delta=self.delta)

    def summary(self) -> dict[str, Any]:
        """JSON-able figures and the caveat, for logs, the results store and the app."""
        return {
            "mode": "dpsgd",
            "unit": "record",
            "epsilon": self.epsilon(),
            "patient_epsilon": self.patient_epsilon(),
            "group_size": self.group_size,
            "delta": self.delta,
            "steps": self.steps,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sample_rate": self.sample_rate,
            "accountant": self.accountant.mechanism(),
            "caveat": (
                "epsilon protects one image; a patient with several images is protected by "
                f"patient_epsilon (group of {self.group_size} images)"
            ),
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: Opacus's history of (noise multiplier, sample rate, steps)."""
        return {
            "version": STATE_VERSION,
            "mechanism": self.accountant.mechanism(),
            "history": [[float(nm), float(q), int(k)] for nm, q, k in self.accountant.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the steps already taken, so the spent epsilon carries over a restart."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"DP-SGD state version {state.get('version')!r} is not supported")
        history = [(float(nm), float(q), int(k)) for nm, q, k in state["history"]]
        if any(nm <= 0 or not 0 < q <= 1 or k < 0 for nm, q, k in history):
            raise ValueError(f"DP-SGD state has an invalid history {history}")
        # Histories are mechanism-agnostic (sampled Gaussian steps); either accountant bounds them.
        self.accountant.history = history


class PrivateTraining(NamedTuple):
    """What `make_private` returns: use these in place of the originals."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader
    privacy: RecordLevelPrivacy


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


def dpsgd_noise_multiplier(
    config: PrivacyConfig,
    *,
    sample_rate: float,
    delta: float,
    epochs: int | None = None,
    steps: int | None = None,
) -> float:
    """sigma as configured, or Opacus's calibration of target_epsilon over the planned
    `epochs` (real nodes) or `steps` (the simulation's fixed-size batches)."""
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier)
    planned = f"{epochs} epochs" if steps is None else f"{steps} DP-SGD steps"
    if (epochs is None or epochs < 1) and (steps is None or steps < 1):
        raise PrivacyConfigError("target_epsilon with dpsgd needs the planned epochs or steps >= 1")
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=float(config.target_epsilon),
                target_delta=delta,
                sample_rate=sample_rate,
                epochs=epochs,
                steps=steps,
                accountant=config.accountant,
            )
        )
    except ValueError as error:
        raise PrivacyConfigError(
            f"target_epsilon={config.target_epsilon} over {planned} is out of reach "
            f"({error}); raise the target or train less"
        ) from error


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    config: PrivacyConfig,
    epochs: int | None = None,
    group_size: int = 1,
    generator: torch.Generator | None = None,
    secure_mode: bool = False,
) -> PrivateTraining:
    """Wrap model, optimizer and loader for record-level DP-SGD (Opacus PrivacyEngine).

    `optimizer` may be any torch.optim.Optimizer whose step() reads p.grad (the product's
    ConsensusOptimizer); Opacus clips per-example gradients to `config.clip_norm`, adds
    noise and hands the result to it. Batches are Poisson-sampled with `generator`, which
    also draws the noise; `secure_mode` uses torchcsprng for both instead (no generator).
    `epochs` is the planned total (needed with target_epsilon). The loss must be a mean.
    """
    if config.mode != "dpsgd":
        raise PrivacyConfigError(f"make_private needs privacy mode 'dpsgd', got {config.mode!r}")
    if (generator is None) != secure_mode:
        raise PrivacyConfigError(
            "pass a torch.Generator with a secret seed, or secure_mode=True (torchcsprng), "
            "not both and not neither"
        )
    validate_model(model)
    delta = config.resolve_delta(len(data_loader.dataset))
    sample_rate = 1 / len(data_loader)
    sigma = dpsgd_noise_multiplier(config, sample_rate=sample_rate, epochs=epochs, delta=delta)
    try:
        engine = PrivacyEngine(accountant=config.accountant, secure_mode=secure_mode)
    except ImportError as error:
        raise PrivacyConfigError(f"secure_mode needs torchcsprng installed ({error})") from error
    # Opacus would Poisson-sample with the loader's own generator; build the Poisson loader
    # here to use ours, and tell Opacus sampling is already done.
    loader = (
        data_loader
        if secure_mode
        else DPDataLoader.from_data_loader(data_loader, generator=generator)
    )
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=float(config.clip_norm),
        poisson_sampling=secure_mode,
        noise_generator=generator,
    )
    private_model.forbid_grad_accumulation()  # as Opacus does for Poisson sampling
    privacy = RecordLevelPrivacy(
        accountant=engine.accountant,
        noise_multiplier=sigma,
        clip_norm=float(config.clip_norm),
        sample_rate=sample_rate,
        delta=delta,
        group_size=group_size,
    )
    return PrivateTraining(private_model, private_optimizer, private_loader, privacy)
