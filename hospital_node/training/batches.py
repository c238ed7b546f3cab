"""A hospital's stream of training batches: seeded shuffled or Poisson sampling, then augmented."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hospital_node.training.augment import BatchAugmenter
from hospital_node.training.config import TrainingConfig

# Independent random streams of one hospital, derived from (seed, hospital name, stream).
SAMPLER_STREAM = 0x5A4
AUGMENT_STREAM = 0xA06
POISSON_STREAM = 0x905
DPSGD_STREAM = 0xD95
EXCHANGE_STREAM = 0xE7C


def stream_seed(seed: int, node: str, stream: int) -> int:
    """A 63-bit seed for one hospital's random stream: the same in a node and the simulation.

    Simulation and tests only for the privacy streams: a real node draws its noise from an
    OS-seeded generator (anyone who knows a seed can subtract the noise).
    """
    words = [seed & 0xFFFFFFFF, seed >> 32, stream, zlib.crc32(node.encode())]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def stream_generator(seed: int, node: str, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, node, stream))


def gather_rows(images: Tensor, indices: Tensor) -> Tensor:
    """Rows `indices` of a site's images as a float32 batch [B, 1, S, S]."""
    return images[indices].to(torch.float32)


class ShuffledSampler:
    """Fixed-size batches from seeded epoch-wise shuffling; its state is checkpointable."""

    def __init__(self, *, num_items: int, batch_size: int, generator: torch.Generator) -> None:
        if num_items <= 0:
            raise ValueError("cannot sample batches from an empty training split")
        self.num_items = num_items
        self.batch_size = batch_size
        self.generator = generator
        self._order = torch.randperm(num_items, generator=self.generator)
        self._cursor = 0

    def next_indices(self) -> Tensor:
        """The next `batch_size` indices; wraps into a fresh permutation at the end of an epoch."""
        taken: list[Tensor] = []
        needed = self.batch_size
        while needed > 0:
            if self._cursor >= self.num_items:
                self._order = torch.randperm(self.num_items, generator=self.generator)
                self._cursor = 0
            chunk = self._order[self._cursor : self._cursor + needed]
            self._cursor += len(chunk)
            needed -= len(chunk)
            taken.append(chunk)
        return torch.cat(taken)

    def state_dict(self) -> dict:
        return {
            "tensors": {"rng": self.generator.get_state(), "order": self._order.clone()},
            "meta": {"cursor": self._cursor, "num_items": self.num_items},
        }

    def load_state_dict(self, state: Mapping) -> None:
        if state["meta"]["num_items"] != self.num_items:
            raise ValueError("checkpoint was made for a different training split size")
        self.generator.set_state(state["tensors"]["rng"])
        self._order = state["tensors"]["order"].clone()
        self._cursor = int(state["meta"]["cursor"])


class PoissonSampler:
    """Poisson sampling for DP-SGD: every record joins a batch independently with probability q.

    What the accountant's sampled-Gaussian analysis assumes (the batch size is random, possibly
    zero), so the epsilon it reports is a bound, not an approximation.
    """

    def __init__(self, *, num_items: int, sample_rate: float, generator: torch.Generator) -> None:
        if num_items <= 0 or not 0 < sample_rate <= 1:
            raise ValueError("Poisson sampling needs records and a rate in (0, 1]")
        self.num_items = num_items
        self.sample_rate = sample_rate
        self.generator = generator

    def next_indices(self) -> Tensor:
        draws = torch.rand(self.num_items, generator=self.generator)
        return torch.nonzero(draws < self.sample_rate).flatten()

    def state_dict(self) -> dict:
        meta = {"num_items": self.num_items}
        return {"tensors": {"rng": self.generator.get_state()}, "meta": meta}

    def load_state_dict(self, state: Mapping) -> None:
        if state["meta"]["num_items"] != self.num_items:
            raise ValueError("checkpoint was made for a different training split size")
        self.generator.set_state(state["tensors"]["rng"])


@dataclass(frozen=True)
class Batch:
    """One hospital's batch: images [B, 1, S, S] float32 in [0, 1] and labels [B, C]."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class SiteBatches:
    """One hospital's batches: its sampler over its training split, then its augmentation.

    `poisson_generator` switches to Poisson sampling at rate batch_size / n (DP-SGD); otherwise
    batches are shuffled epochs seeded from (training.seed, node). With `secret_sampling` (a
    real node's OS-seeded generator) the sampler's state never enters a checkpoint: which
    records a private step used is part of the mechanism's secret randomness.
    """

    def __init__(
        self,
        *,
        node: str,
        images: Tensor,
        labels: Tensor,
        config: TrainingConfig,
        poisson_generator: torch.Generator | None = None,
        secret_sampling: bool = False,
    ) -> None:
        self.images = images
        # only a Poisson sampler draws from the DP generator; shuffled epochs are no secret
        self.secret_sampling = secret_sampling and poisson_generator is not None
        self.labels = labels
        n = len(labels)
        if poisson_generator is not None:
            rate = min(1.0, config.batch_size / max(n, 1))
            self.sampler: ShuffledSampler | PoissonSampler = PoissonSampler(
                num_items=n, sample_rate=rate, generator=poisson_generator
            )
        else:
            self.sampler = ShuffledSampler(
                num_items=n,
                batch_size=config.batch_size,
                generator=stream_generator(config.seed, node, SAMPLER_STREAM),
            )
        self.augmenter = None
        if config.augment.enabled:
            generator = stream_generator(config.seed, node, AUGMENT_STREAM)
            self.augmenter = BatchAugmenter(config.augment, generator=generator)

    def next_batch(self) -> Batch:
        indices = self.sampler.next_indices()
        images = gather_rows(self.images, indices)
        if self.augmenter is not None:
            images = self.augmenter(images)
        return Batch(images, self.labels[indices])

    def state_dict(self) -> dict:
        state: dict = {} if self.secret_sampling else {"sampler": self.sampler.state_dict()}
        if self.augmenter is not None:
            state["augment"] = self.augmenter.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        if not self.secret_sampling:
            self.sampler.load_state_dict(state["sampler"])
        if self.augmenter is not None:
            self.augmenter.load_state_dict(state["augment"])
