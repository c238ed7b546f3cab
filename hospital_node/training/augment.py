"""Batched, seeded radiograph augmentation: one MONAI affine resampling per batch, gamma."""

from __future__ import annotations

import math

import torch
from monai.networks.layers import AffineTransform
from torch import Tensor

from hospital_node.training.config import AugmentConfig


class BatchAugmenter:
    """Random small affine (rotation, shift, scale) and contrast gamma of each image in a batch.

    The random draws come from the injected generator only, in a fixed order per batch, so a
    node and the simulation seeded alike augment alike; its state is checkpointed. The affine
    is resampled for the whole batch at once by MONAI's AffineTransform (bilinear, zero
    padding, normalised coordinates); an image the draw leaves alone keeps the identity.
    """

    def __init__(self, config: AugmentConfig, *, generator: torch.Generator) -> None:
        self.config = config
        self.generator = generator
        self._resample = AffineTransform(
            normalized=True, reverse_indexing=False, align_corners=False, padding_mode="zeros"
        )

    def _uniform(self, n: int, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def _chosen(self, n: int) -> Tensor:
        return torch.rand(n, generator=self.generator) < self.config.probability

    def affine_matrices(self, n: int) -> Tensor:
        """[n, 2, 3] pull-direction matrices in normalised coordinates (identity if not drawn)."""
        c = self.config
        apply = self._chosen(n)
        angle = self._uniform(n, -1, 1) * math.radians(c.rotate_degrees)
        scale = 1 + self._uniform(n, -1, 1) * c.scale_fraction
        shift = self._uniform(2 * n, -1, 1).view(n, 2) * 2 * c.translate_fraction  # [-1,1] spans 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
        return torch.where(apply.view(n, 1, 1), theta, identity)

    def gammas(self, n: int) -> Tensor:
        """[n] contrast exponents (1 where the draw leaves the image alone)."""
        low, high = self.config.contrast_gamma
        apply = self._chosen(n)
        gamma = self._uniform(n, low, high)
        return torch.where(apply, gamma, torch.ones_like(gamma))

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """Augmented copy of `images` [B, 1, S, S] in [0, 1]; an empty batch passes through."""
        n = images.shape[0]
        if n == 0:
            return images
        theta = self.affine_matrices(n).to(images)
        gamma = self.gammas(n).to(images).view(n, 1, 1, 1)
        moved = self._resample(images, theta).clamp_(0.0, 1.0)
        return moved.pow_(gamma)

    def state_dict(self) -> dict:
        return {"tensors": {"rng": self.generator.get_state()}, "meta": {}}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["tensors"]["rng"])
