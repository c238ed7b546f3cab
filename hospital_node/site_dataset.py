"""A torch Dataset of (image, label) pairs over SiteData, with optional seeded augmentation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from monai.transforms import Compose, RandAdjustContrast, RandAffine
from torch.utils.data import Dataset, get_worker_info

if TYPE_CHECKING:
    from hospital_node.data import SiteData


@dataclass(frozen=True)
class AugmentConfig:
    """Mild, anatomy-preserving radiograph augmentation. No flips: the heart is on the left,
    and a flipped film would teach the network situs inversus."""

    probability: float = 0.5
    rotate_degrees: float = 7.0
    translate_fraction: float = 0.05
    scale_fraction: float = 0.1
    gamma_range: tuple[float, float] = (0.8, 1.25)


def build_augmentation(image_size: int, config: AugmentConfig, *, seed: int) -> Compose:
    """MONAI random transforms for [1, S, S] images, owning a random state seeded by `seed`."""
    shift = config.translate_fraction * image_size
    transform = Compose(
        [
            RandAffine(
                prob=config.probability,
                rotate_range=math.radians(config.rotate_degrees),
                translate_range=(shift, shift),
                scale_range=(config.scale_fraction, config.scale_fraction),
                padding_mode="zeros",
            ),
            RandAdjustContrast(prob=config.probability, gamma=config.gamma_range),
        ]
    )
    return transform.set_random_state(seed=seed)


class SiteDataset(Dataset):
    """(image [1, S, S], labels [NUM_FINDINGS]) float32 pairs of one site's SiteData.

    With `augment`, each item passes through build_augmentation, whose random state is this
    dataset's own (seeded by `seed`); DataLoader workers should pass `worker_init_fn` so
    each worker draws a different stream.
    """

    def __init__(
        self,
        data: SiteData,
        *,
        augment: bool = False,
        seed: int = 0,
        augment_config: AugmentConfig | None = None,
    ) -> None:
        self.data = data
        size = int(data.images.shape[-1])
        config = augment_config or AugmentConfig()
        self.transform = build_augmentation(size, config, seed=seed) if augment else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.data.images[index]
        if self.transform is not None:
            out = self.transform(image)
            # MetaTensor -> plain tensor: cheaper to collate, no metadata needed downstream.
            image = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
            image = image.clamp(0.0, 1.0)
        return image.to(torch.float32), self.data.labels[index]

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random stream from `seed` (no-op without augmentation)."""
        if self.transform is not None:
            self.transform.set_random_state(seed=seed)

    @staticmethod
    def worker_init_fn(worker_id: int) -> None:
        """DataLoader hook: reseed each worker's copy from torch's per-worker seed."""
        info = get_worker_info()
        if info is not None and isinstance(info.dataset, SiteDataset):
            info.dataset.reseed(int(info.seed % 2**32))
