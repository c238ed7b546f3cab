"""Loss, batch sampling and gradients for one model or a stack of same-architecture models."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.nn import functional as F


def positive_weights(train_labels: Tensor, *, max_weight: float = 20.0) -> Tensor:
    """Per-finding BCE positive weight n_neg / n_pos, capped; a finding with no positives gets 1.

    A site that never saw a finding must not blow up its loss (n_pos = 0 would give inf).
    """
    n_pos = train_labels.sum(0)
    n_neg = train_labels.shape[0] - n_pos
    weights = torch.where(n_pos > 0, n_neg / n_pos.clamp(min=1), torch.ones_like(n_pos))
    return weights.clamp(max=max_weight)


class BatchSampler:
    """Seeded epoch-wise shuffling over a fixed index set; its state is a checkpointable tensor."""

    def __init__(self, *, num_items: int, batch_size: int, seed: int) -> None:
        if num_items <= 0:
            raise ValueError("cannot sample batches from an empty training split")
        self.num_items = num_items
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
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


class FunctionalModel:
    """A module used as a pure function of its parameters, for one model or a vmapped stack."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.buffers = {k: v.detach() for k, v in module.named_buffers()}
        self._grad = grad_and_value(self._loss)
        self._stacked_grad = vmap(self._grad, in_dims=(0, 0, 0, None))
        self._stacked_forward = vmap(self._forward, in_dims=(0, None))

    def _forward(self, params: Mapping[str, Tensor], images: Tensor) -> Tensor:
        return functional_call(self.module, (dict(params), self.buffers), (images,))

    def _loss(
        self, params: Mapping[str, Tensor], images: Tensor, labels: Tensor, pos_weight: Tensor | None
    ) -> Tensor:
        logits = self._forward(params, images)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)

    def gradients(
        self, params: Mapping[str, Tensor], images: Tensor, labels: Tensor, pos_weight: Tensor | None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(grads, loss) of one model on one batch."""
        return self._grad(params, images, labels, pos_weight)

    def stacked_gradients(
        self, params: Mapping[str, Tensor], images: Tensor, labels: Tensor, pos_weight: Tensor | None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(grads [K, ...], losses [K]) of K stacked models, each on its own batch images[k]."""
        return self._stacked_grad(params, images, labels, pos_weight)

    @torch.no_grad()
    def predict(self, params: Mapping[str, Tensor], images: Tensor, *, chunk: int = 256) -> Tensor:
        """Sigmoid probabilities [N, C] of one model."""
        outs = [torch.sigmoid(self._forward(params, images[i : i + chunk])) for i in range(0, len(images), chunk)]
        return torch.cat(outs)

    @torch.no_grad()
    def stacked_predict(self, params: Mapping[str, Tensor], images: Tensor, *, chunk: int = 256) -> Tensor:
        """Sigmoid probabilities [K, N, C] of K stacked models on the same images."""
        outs = [
            torch.sigmoid(self._stacked_forward(params, images[i : i + chunk]))
            for i in range(0, len(images), chunk)
        ]
        return torch.cat(outs, dim=1)


def stacked_parameters(module: nn.Module, copies: int) -> dict[str, Tensor]:
    """`copies` identical copies of the module's parameters stacked on a leading node axis.

    Plain tensors (no autograd): consensus updates write into per-node views of them in place.
    """
    params, _ = stack_module_state([module] * copies)
    return {k: v.detach().clone() for k, v in params.items()}


def single_parameters(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the module's parameters, updated in place by the consensus algorithm."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}
