"""Classifier networks (MONAI), GroupNorm throughout; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass

from monai.networks.nets import DenseNet, DenseNet121
from torch import nn

from data_tools.labels import NUM_FINDINGS

ARCHITECTURES = ("compact", "densenet121")
# Out-of-place ReLU: torch.func (vmap over several hospitals' models) and Opacus hooks need it.
_ACT = ("relu", {"inplace": False})


@dataclass(frozen=True)
class ModelConfig:
    """Which network: `compact` for CPU demos, `densenet121` (CheXNet-style) for full-size runs."""

    architecture: str = "compact"
    image_size: int = 64
    in_channels: int = 1
    num_classes: int = NUM_FINDINGS
    # GroupNorm, not BatchNorm: batch statistics do not survive non-homogeneous sites or DP-SGD.
    norm_groups: int = 8
    dropout: float = 0.0


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised network for `config`; weights depend only on torch's RNG state."""
    if config.architecture == "densenet121":
        return DenseNet121(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.num_classes,
            norm=("group", {"num_groups": 32}),
            act=_ACT,
            dropout_prob=config.dropout,
        )
    if config.architecture == "compact":
        # A small DenseNet: the full-size model's family, ~43 k parameters, minutes on 2 CPU cores.
        return DenseNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.num_classes,
            init_features=32,
            growth_rate=16,
            block_config=(2, 2, 2),  # keeps every width a multiple of 8 for GroupNorm
            bn_size=2,
            norm=("group", {"num_groups": config.norm_groups}),
            act=_ACT,
            dropout_prob=config.dropout,
        )
    raise ValueError(f"unknown architecture {config.architecture!r}; choose one of {ARCHITECTURES}")
