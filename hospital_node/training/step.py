"""The one local training step of every hospital, in a node (K = 1) and in the simulation (K).

Batches in, gradients out: `ModelStack.gradients` takes the hospitals' batches (each from
its `HospitalTrainer`), computes every model's gradient as one vmapped computation, with
DP-SGD's clipping and noise when configured, and hands back one gradient per hospital; the
caller applies it with its consensus algorithm (`Algorithm.local_step`). Predictions for
evaluation come from the same stack.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hospital_node.devices import resolve_device, stack_to_device, to_device
from hospital_node.privacy.dpsgd import DpsgdMechanism, private_gradients
from hospital_node.training.batches import Batch, SiteBatches
from hospital_node.training.config import TrainingConfig
from hospital_node.training.functional import FunctionalModel, positive_weights, stacked_parameters

log = logging.getLogger(__name__)

Gradient = tuple[dict[str, Tensor], float | None]  # (gradients, mean loss or None if no example)


@dataclass
class HospitalTrainer:
    """One hospital's side of a step: its batch stream, positive weights and DP-SGD mechanism."""

    name: str
    batches: SiteBatches
    pos_weight: Tensor  # [C]; ones = unweighted
    dpsgd: DpsgdMechanism | None = None

    @classmethod
    def build(
        cls,
        *,
        name: str,
        images: Tensor,
        labels: Tensor,
        config: TrainingConfig,
        dpsgd: DpsgdMechanism | None = None,
        secret_sampling: bool = False,
    ) -> HospitalTrainer:
        """The trainer of hospital `name`; DP-SGD samples Poisson batches with its generator.

        Under DP-SGD no positive weights are used: they are computed from the site's labels
        outside the private mechanism, so they would leak them.
        """
        weighted = config.positive_weighting and dpsgd is None
        if config.positive_weighting and dpsgd is not None:
            log.info("%s: DP-SGD trains without positive weighting (it would leak labels)", name)
        pos_weight = (
            positive_weights(labels, max_weight=config.max_positive_weight)
            if weighted
            else torch.ones(labels.shape[1])
        )
        batches = SiteBatches(
            node=name,
            images=images,
            labels=labels,
            config=config,
            poisson_generator=None if dpsgd is None else dpsgd.generator,
            secret_sampling=secret_sampling,
        )
        return cls(name, batches, pos_weight, dpsgd)

    def next_batch(self) -> Batch:
        return self.batches.next_batch()

    def state_dict(self) -> dict:
        """The batch stream's state (the DP accountant is the privacy ledger's business)."""
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def _pad(batches: Sequence[Batch]) -> tuple[Tensor, Tensor, Tensor]:
    """Batches of different sizes (Poisson) as [K, B_max, ...] tensors and a [K, B_max] mask."""
    size = max(1, max(len(b) for b in batches))
    first = batches[0]
    images = first.images.new_zeros((len(batches), size, *first.images.shape[1:]))
    labels = first.labels.new_zeros((len(batches), size, *first.labels.shape[1:]))
    mask = torch.zeros(len(batches), size)
    for k, batch in enumerate(batches):
        images[k, : len(batch)] = batch.images
        labels[k, : len(batch)] = batch.labels
        mask[k, : len(batch)] = 1
    return images, labels, mask


class ModelStack:
    """K same-architecture models as one stack of parameters, stepped by one vmapped call.

    `params[name]` is [K, ...]; `views[k]` holds model k's tensors, views into the stack that
    the consensus algorithm of hospital k updates in place (never rebinds).
    `device`, `precision` and `channels_last` are `TrainingConfig`'s; the device is checked
    here (DeviceError: CUDA asked for and absent). On CUDA, batches go to the GPU from pinned
    host memory with asynchronous copies (`hospital_node.devices`).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        copies: int,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        self.device = resolve_device(device, precision=precision)
        if channels_last and copies > 1:
            log.info("channels_last: %d stacked models keep the default layout (vmap)", copies)
        self.model = FunctionalModel(
            module.to(self.device), precision=precision, channels_last=channels_last
        )
        stacked = stacked_parameters(module, copies)
        self.params = {k: v.to(self.device) for k, v in stacked.items()}
        self.views = [{k: v[i] for k, v in self.params.items()} for i in range(copies)]

    @classmethod
    def for_training(cls, module: nn.Module, *, copies: int, config: TrainingConfig) -> ModelStack:
        """The stack a node (copies = 1) or the simulation trains, on `config`'s device."""
        return cls(module, copies=copies, device=config.device, precision=config.precision,
                   channels_last=config.channels_last)  # fmt: skip

    def _subset(self, nodes: Sequence[int]) -> dict[str, Tensor]:
        if list(nodes) == list(range(len(self.views))):
            return self.params  # all of them, in order: no copy
        index = torch.tensor(list(nodes), device=self.device)
        return {k: v.index_select(0, index) for k, v in self.params.items()}

    def gradients(
        self, nodes: Sequence[int], trainers: Sequence[HospitalTrainer]
    ) -> list[Gradient]:
        """Each listed model's gradient on its hospital's next batch, as one computation.

        `trainers[j]` is the trainer of model `nodes[j]`. All of them use DP-SGD or none does.
        """
        batches = [trainer.next_batch() for trainer in trainers]
        params = self._subset(nodes)
        if trainers[0].dpsgd is not None:
            return self._private(params, batches, [t.dpsgd for t in trainers])
        images = stack_to_device([b.images for b in batches], self.device)
        labels = stack_to_device([b.labels for b in batches], self.device)
        pos = stack_to_device([t.pos_weight for t in trainers], self.device)
        grads, losses = self.model.stacked_gradients(params, images, labels, pos)
        return [
            ({k: g[j] for k, g in grads.items()}, float(losses[j])) for j in range(len(batches))
        ]

    def _private(
        self, params: dict[str, Tensor], batches: list[Batch], mechanisms: list[DpsgdMechanism]
    ) -> list[Gradient]:
        images, labels, mask = _pad(batches)
        per_example, losses = self.model.stacked_per_example_gradients(
            params, to_device(images, self.device), to_device(labels, self.device)
        )
        grads = private_gradients(per_example, mask.to(self.device), mechanisms)
        counts = mask.sum(1)
        mean_losses = (losses.cpu() * mask).sum(1) / counts.clamp(min=1)
        return [
            ({k: g[j] for k, g in grads.items()}, float(mean_losses[j]) if counts[j] else None)
            for j in range(len(batches))
        ]

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Probabilities [K, N, C] of every model on the same images."""
        return self.model.stacked_predict(self.params, images.to(self.device)).cpu()

    @torch.no_grad()
    def predict_node(self, index: int, images: Tensor) -> Tensor:
        """Probabilities [N, C] of model `index`."""
        params = {k: v.unsqueeze(0) for k, v in self.views[index].items()}
        return self.model.stacked_predict(params, images.to(self.device))[0].cpu()

    def node_state(self, index: int) -> dict[str, Tensor]:
        """A detached CPU copy of model `index`'s parameters and buffers (a full state dict)."""
        params = {k: v.detach().cpu().clone() for k, v in self.views[index].items()}
        buffers = {k: v.detach().cpu().clone() for k, v in self.model.buffers.items()}
        return {**params, **buffers}

    def load_node_state(self, index: int, state: dict[str, Tensor]) -> None:
        """Copy a state dict's parameters into model `index` (in place: views stay valid)."""
        missing = sorted(set(self.views[index]) - set(state))
        if missing:
            raise ValueError(f"model state lacks parameters {missing[:3]}")
        with torch.no_grad():
            for name, view in self.views[index].items():
                view.copy_(state[name])
