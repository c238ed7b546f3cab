"""Classifier networks (MONAI), GroupNorm throughout, and the common initial model."""

from __future__ import annotations

import torch
from monai.networks.nets import DenseNet, DenseNet121
from torch import nn

from hospital_node.training.config import ARCHITECTURES, HEADS, ModelConfig
from hospital_node.training.weights import load_weights

# Out-of-place ReLU: torch.func (vmap over several hospitals' models) needs it.
_ACT = ("relu", {"inplace": False})


# The "grid" head's layout: 4 x 4 cells is the compact net's whole last map at 64 px.
GRID_CELLS = 4


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised network for `config`; weights depend only on torch's RNG state."""
    module = _backbone(config)
    if config.head == "grid":
        _grid_head(module.class_layers, GRID_CELLS)
    return module


def _grid_head(layers: nn.Sequential, cells: int) -> None:
    """Pool the last map to `cells` x `cells` and read all cells: a position-aware linear head.

    Averaging the whole map (CheXNet) makes the net blind to where a pattern lies; on a few
    hundred films it cannot learn that from the features alone, while a pixel regression can.
    """
    width = layers.out.in_features
    layers.pool = nn.AdaptiveAvgPool2d(cells)
    layers.out = nn.Linear(width * cells * cells, layers.out.out_features)


def _backbone(config: ModelConfig) -> nn.Module:
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


__all__ = ["ARCHITECTURES", "HEADS", "ModelConfig", "build_model", "initial_model"]
