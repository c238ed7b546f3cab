"""Classifier networks (MONAI), GroupNorm throughout, and the common initial model."""

from __future__ import annotations

import torch
from monai.networks.nets import DenseNet, DenseNet121
from torch import nn

from hospital_node.training.config import ARCHITECTURES, ModelConfig
from hospital_node.training.weights import load_weights

# Out-of-place ReLU: torch.func (vmap over several hospitals' models) needs it.
_ACT = ("relu", {"inplace": False})


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


def initial_model(config: ModelConfig, *, seed: int) -> nn.Module:
    """The common initial model of a network: the same `seed` gives the same weights everywhere.

    Built under a forked RNG so the caller's random state is untouched; with `config.weights`
    the pretrained file then replaces what it covers (`load_weights`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_model(config)
    if config.weights:
        load_weights(module, config.weights)
    module.train()
    return module


__all__ = ["ARCHITECTURES", "ModelConfig", "build_model", "initial_model"]
