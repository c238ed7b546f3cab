"""ModelConfig and TrainingConfig: the network and the local training recipe, one type each
for every node and for the simulation (no torch or MONAI import: quick node status)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from data_tools.labels import NUM_FINDINGS

ARCHITECTURES = ("compact", "densenet121")
# How the last feature map becomes 14 logits: "pool" averages it to one vector (CheXNet);
# "grid" keeps a coarse 4 x 4 layout, so a finding can be read where it lies on the film.
HEADS = ("pool", "grid")
PRECISIONS = ("fp32", "bf16")  # training.precision: float32, or bfloat16 autocast


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which network: `compact` for CPU demos, `densenet121` (CheXNet-style) for full-size runs.

    The input resolution is the data's (`DataConfig.image_size`), not a model setting.
    `weights`: a local file of pretrained weights to start from (docs/researcher.md); empty =
    the seeded random initialisation. Nothing is ever downloaded.
    """

    architecture: str = "compact"
    in_channels: int = 1
    num_classes: int = NUM_FINDINGS
    # GroupNorm, not BatchNorm: batch statistics do not survive non-homogeneous sites or DP-SGD.
    norm_groups: int = 8
    dropout: float = 0.0
    head: str = "pool"
    weights: str = ""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelConfig:
        """The config of a stored model record (results store), which also carries the data's
        `image_size`; a record's `weights` path is not reloaded (the state is stored)."""
        names = {f.name for f in fields(cls)} - {"weights"}
        return cls(**{k: v for k, v in record.items() if k in names})

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"model.architecture={self.architecture!r}: choose one of {ARCHITECTURES}"
            )
        if self.head not in HEADS:
            raise ValueError(f"model.head={self.head!r}: choose one of {HEADS}")
        if not 0 <= self.dropout < 1 or self.norm_groups < 1:
            raise ValueError("model.dropout must be in [0, 1) and model.norm_groups >= 1")


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Mild, anatomy-preserving radiograph augmentation, applied to each training batch.

    No flips: the heart is on the left, and a flipped film would teach the network situs
    inversus. Each image is, with `probability`, rotated, shifted and scaled (one affine), and,
    with `probability`, its contrast changed by a gamma drawn from `contrast_gamma`.
    """

    enabled: bool = False
    probability: float = 0.5
    rotate_degrees: float = 7.0
    translate_fraction: float = 0.05
    scale_fraction: float = 0.1
    contrast_gamma: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        if not 0 <= self.probability <= 1:
            raise ValueError(f"augment.probability must be in [0, 1], got {self.probability}")
        if min(self.rotate_degrees, self.translate_fraction, self.scale_fraction) < 0:
            raise ValueError("augment ranges (degrees, fractions) must be >= 0")
        low, high = self.contrast_gamma
        if not 0 < low <= high:
            raise ValueError(f"augment.contrast_gamma must be 0 < low <= high, got {low}, {high}")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """How one hospital trains its model locally, identical in a node and in the simulation.

    The gradient step itself (learning rate, schedule, weight decay, momentum) belongs to the
    consensus algorithm (`consensus.config.ConsensusConfig`), which applies it.
    `seed` is shared by every hospital of a network: it fixes the common initial model, and
    with each hospital's name it seeds that hospital's batch order and augmentation.
    `steps` is the local-step budget (a node: 0 = until stopped). `epochs` > 0 with
    `steps` = 0 derives the budget from the data instead: ceil(epochs x training images /
    batch_size), at least `min_steps` (`steps_for`; the simulation counts the mean
    hospital's training images).
    `device`, `precision` and `channels_last` choose how the step is computed:
    `precision = "bf16"` runs the forward pass under bfloat16 autocast (parameters, gradients
    and the loss stay float32); `channels_last` hands convolutions NHWC tensors where the
    engine allows it (docs/researcher.md, "GPU"). The defaults (fp32, off) are bit-for-bit
    the plain float32 path.
    """

    steps: int = 250
    epochs: float = 0.0
    min_steps: int = 0
    batch_size: int = 16
    seed: int = 0
    # BCE pos_weight = n_neg / n_pos per finding, from the site's training labels, capped.
    positive_weighting: bool = True
    max_positive_weight: float = 20.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    checkpoint_every: int = 50  # local steps between resumable checkpoints

    def __post_init__(self) -> None:
        if min(self.steps, self.min_steps) < 0 or self.batch_size < 1 or self.epochs < 0:
            raise ValueError(
                "training.steps, min_steps, epochs must be >= 0 and training.batch_size >= 1"
            )
        if self.max_positive_weight < 1:
            raise ValueError("training.max_positive_weight must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision={self.precision!r}: choose one of {PRECISIONS}")
        if self.checkpoint_every < 1 or self.threads < 0:
            raise ValueError("training.threads must be >= 0 and checkpoint_every >= 1")

    def steps_for(self, n_train: float) -> int:
        """The local-step budget on `n_train` training images: `steps` when set, else the
        steps of `epochs` passes at `batch_size` (at least `min_steps`, and 1), else 0
        (until stopped)."""
        if self.steps > 0 or self.epochs == 0:
            return self.steps
        return max(1, self.min_steps, math.ceil(self.epochs * n_train / self.batch_size))
