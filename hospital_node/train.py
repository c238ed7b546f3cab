"""Loss, batch sampling and gradients for one model or a stack of same-architecture models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.nn import functional as F

_CLIP_MARGIN = 1e-6  # relative; see clip_per_example


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
        # Per-example gradients for DP-SGD: over the examples of a batch, then over the models.
        per_example = vmap(grad_and_value(self._example_loss), in_dims=(None, 0, 0))
        self._stacked_per_example_grad = vmap(per_example, in_dims=(0, 0, 0))

    def _forward(self, params: Mapping[str, Tensor], images: Tensor) -> Tensor:
        return functional_call(self.module, (dict(params), self.buffers), (images,))

    def _loss(
        self,
        params: Mapping[str, Tensor],
        images: Tensor,
        labels: Tensor,
        pos_weight: Tensor | None,
    ) -> Tensor:
        logits = self._forward(params, images)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)

    def _example_loss(self, params: Mapping[str, Tensor], image: Tensor, label: Tensor) -> Tensor:
        """One example's loss; the batch loss of `_loss` is the mean of these (no pos_weight)."""
        return self._loss(params, image.unsqueeze(0), label.unsqueeze(0), None)

    def gradients(
        self,
        params: Mapping[str, Tensor],
        images: Tensor,
        labels: Tensor,
        pos_weight: Tensor | None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(grads, loss) of one model on one batch."""
        return self._grad(params, images, labels, pos_weight)

    def stacked_gradients(
        self,
        params: Mapping[str, Tensor],
        images: Tensor,
        labels: Tensor,
        pos_weight: Tensor | None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(grads [K, ...], losses [K]) of K stacked models, each on its own batch images[k]."""
        return self._stacked_grad(params, images, labels, pos_weight)

    def stacked_per_example_gradients(
        self, params: Mapping[str, Tensor], images: Tensor, labels: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(grads [K, B, ...], losses [K, B]): each example's own gradient, for DP-SGD.

        The mean over B of these gradients is `stacked_gradients` without pos_weight: DP-SGD
        cannot use pos_weight, which is computed from the site's labels outside the mechanism.
        """
        return self._stacked_per_example_grad(params, images, labels)

    @torch.no_grad()
    def predict(self, params: Mapping[str, Tensor], images: Tensor, *, chunk: int = 256) -> Tensor:
        """Sigmoid probabilities [N, C] of one model."""
        outs = [
            torch.sigmoid(self._forward(params, images[i : i + chunk]))
            for i in range(0, len(images), chunk)
        ]
        return torch.cat(outs)

    @torch.no_grad()
    def stacked_predict(
        self, params: Mapping[str, Tensor], images: Tensor, *, chunk: int = 256
    ) -> Tensor:
        """Sigmoid probabilities [K, N, C] of K stacked models on the same images."""
        outs = [
            torch.sigmoid(self._stacked_forward(params, images[i : i + chunk]))
            for i in range(0, len(images), chunk)
        ]
        return torch.cat(outs, dim=1)


def clip_per_example(per_example: Mapping[str, Tensor], clip_norm: float) -> dict[str, Tensor]:
    """Scale each example's gradient [K, B, ...] (all tensors together) to L2 norm <= clip_norm.

    The bound is the privacy proof's sensitivity, so it must survive rounding: norms are taken
    in float64 and examples are scaled to C (1 - 1e-6), a margin above float32's rounding of
    the product (Opacus's norm + 1e-6 can end an ulp above C).
    """
    squares = [(g.double().flatten(2) ** 2).sum(-1) for g in per_example.values()]
    norms = torch.stack(squares).sum(0).sqrt()  # [K, B]
    bound = clip_norm * (1 - _CLIP_MARGIN)
    factor = torch.where(norms > bound, bound / norms, torch.ones_like(norms))
    return {
        name: g * factor.to(g.dtype).view(*factor.shape, *([1] * (g.ndim - 2)))
        for name, g in per_example.items()
    }


def private_gradients(
    per_example: Mapping[str, Tensor],
    *,
    clip_norm: float,
    noise_multipliers: Sequence[float],
    generators: Sequence[torch.Generator],
) -> dict[str, Tensor]:
    """DP-SGD gradient of K models: (sum_b clip(g_kb, C) + N(0, sigma_k^2 C^2 I)) / B.

    `per_example` holds [K, B, ...] gradients; model k's noise comes from `generators[k]`, one
    tensor at a time in sorted-name order, so a node's noise does not depend on which other
    nodes share the batch. With sigma = 0 and a huge C this is the plain mean gradient.
    """
    clipped = clip_per_example(per_example, clip_norm)
    batch = next(iter(per_example.values())).shape[1]
    out = {}
    for name in sorted(clipped):
        summed = clipped[name].sum(1)
        noise = torch.stack(
            [
                sigma * clip_norm * torch.randn(summed.shape[1:], generator=generator)
                for sigma, generator in zip(noise_multipliers, generators, strict=True)
            ]
        )
        out[name] = (summed + noise.to(device=summed.device, dtype=summed.dtype)) / batch
    return out


def stacked_parameters(module: nn.Module, copies: int) -> dict[str, Tensor]:
    """`copies` identical copies of the module's parameters stacked on a leading node axis.

    Plain tensors (no autograd): consensus updates write into per-node views of them in place.
    """
    params, _ = stack_module_state([module] * copies)
    return {k: v.detach().clone() for k, v in params.items()}


def single_parameters(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the module's parameters, updated in place by the consensus algorithm."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}
