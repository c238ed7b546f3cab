"""A network used as a pure function of its parameters: losses, gradients, predictions, vmapped."""

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


class FunctionalModel:
    """A module used as a pure function of its parameters, for one model or a vmapped stack.

    Every hospital's step goes through here, in the simulation (K stacked hospitals) and in a
    node (K = 1): the loss is the mean binary cross-entropy with logits, with a per-finding
    positive weight ([K, C]; ones = unweighted).

    `precision = "bf16"`: the forward pass runs under bfloat16 autocast; parameters, gradients,
    logits and loss stay float32. `channels_last`: a one-model stack (K = 1: a node, the
    centralized reference) runs outside vmap on NHWC tensors; torch's vmap cannot run GroupNorm
    on channels_last tensors ("clone(memory_format) inside vmap ... NYI", torch 2.13), so a
    K-model stack and DP-SGD's per-example gradients keep the default layout.
    """

    def __init__(
        self, module: nn.Module, *, precision: str = "fp32", channels_last: bool = False
    ) -> None:
        self.module = module
        self.buffers = {k: v.detach() for k, v in module.named_buffers()}
        self.autocast = precision == "bf16"
        self.channels_last = channels_last
        self._grad = grad_and_value(self._loss)
        self._stacked_grad = vmap(self._grad, in_dims=(0, 0, 0, 0))
        self._stacked_forward = vmap(self._forward, in_dims=(0, None))
        # Per-example gradients for DP-SGD: over the examples of a batch, then over the models.
        per_example = vmap(grad_and_value(self._example_loss), in_dims=(None, 0, 0))
        self._stacked_per_example_grad = vmap(per_example, in_dims=(0, 0, 0))

    def _forward(self, params: Mapping[str, Tensor], images: Tensor) -> Tensor:
        if not self.autocast:
            return functional_call(self.module, (dict(params), self.buffers), (images,))
        # Autocast wraps the forward only: the gradient transform runs the backward after this
        # returns (outside the context, as torch.amp advises), and float32 logits keep the loss
        # and every gradient float32. bfloat16 has float32's range: no loss scaling needed.
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16):
            logits = functional_call(self.module, (dict(params), self.buffers), (images,))
        return logits.float()

    def _loss(
        self, params: Mapping[str, Tensor], images: Tensor, labels: Tensor, pos_weight: Tensor
    ) -> Tensor:
        logits = self._forward(params, images)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)

    def _example_loss(self, params: Mapping[str, Tensor], image: Tensor, label: Tensor) -> Tensor:
        """One example's unweighted loss (DP-SGD: weights from the labels would leak them)."""
        logits = self._forward(params, image.unsqueeze(0))
        return F.binary_cross_entropy_with_logits(logits, label.unsqueeze(0))

    def stacked_gradients(
        self, params: Mapping[str, Tensor], images: Tensor, labels: Tensor, pos_weight: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(grads [K, ...], losses [K]) of K stacked models, model k on batch images[k]."""
        if self._single_channels_last(images):
            one = _channels_last_model(params)
            grads, loss = self._grad(one, _channels_last(images[0]), labels[0], pos_weight[0])
            # back to the default layout: the consensus update reads gradients as flat slices
            return {k: g.contiguous().unsqueeze(0) for k, g in grads.items()}, loss.unsqueeze(0)
        return self._stacked_grad(params, images, labels, pos_weight)

    def _single_channels_last(self, stacked: Tensor) -> bool:
        """True where channels_last applies: a stacked tensor [K, ...] of one model (K = 1)."""
        return self.channels_last and stacked.shape[0] == 1

    def stacked_per_example_gradients(
        self, params: Mapping[str, Tensor], images: Tensor, labels: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(grads [K, B, ...], losses [K, B]): each example's own gradient, for DP-SGD."""
        return self._stacked_per_example_grad(params, images, labels)

    @torch.no_grad()
    def stacked_predict(
        self, params: Mapping[str, Tensor], images: Tensor, *, chunk: int = 256
    ) -> Tensor:
        """Sigmoid probabilities [K, N, C] of K stacked models on the same images."""
        if self._single_channels_last(next(iter(params.values()))):
            one = _channels_last_model(params)

            def forward(x: Tensor) -> Tensor:
                return self._forward(one, _channels_last(x)).unsqueeze(0)
        else:

            def forward(x: Tensor) -> Tensor:
                return self._stacked_forward(params, x)

        outs = [torch.sigmoid(forward(images[i : i + chunk])) for i in range(0, len(images), chunk)]
        return torch.cat(outs, dim=1)


def _channels_last(images: Tensor) -> Tensor:
    """[B, C, H, W] images in NHWC memory order (the same values)."""
    return images.contiguous(memory_format=torch.channels_last)


def _channels_last_model(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Model 0 of a stack, its convolution weights ([O, I, kh, kw]) copied to NHWC order."""
    return {k: _channels_last(v[0]) if v.ndim == 5 else v[0] for k, v in params.items()}


def stacked_parameters(module: nn.Module, copies: int) -> dict[str, Tensor]:
    """`copies` identical copies of the module's parameters stacked on a leading node axis.

    Plain tensors (no autograd): consensus updates write into per-node views of them in place.
    All of one dtype and device live in one [copies, N] buffer, so model k's parameters lie
    back to back in row k and the consensus update runs over flat slices of it
    (consensus.flat_state), in a node (copies = 1) as in the simulation.
    """
    params, _ = stack_module_state([module] * copies)
    groups: dict[tuple[torch.dtype, torch.device], list[str]] = {}
    for name, tensor in params.items():
        groups.setdefault((tensor.dtype, tensor.device), []).append(name)
    out: dict[str, Tensor] = {}
    for (dtype, device), names in groups.items():
        sizes = [params[name][0].numel() for name in names]
        flat = torch.empty(copies, sum(sizes), dtype=dtype, device=device)
        for name, piece in zip(names, flat.split(sizes, dim=1), strict=True):
            view = piece.view(params[name].shape)
            view.copy_(params[name].detach())
            out[name] = view
    return {name: out[name] for name in params}
