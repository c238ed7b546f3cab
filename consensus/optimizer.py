"""ConsensusOptimizer: a thin torch.optim.Optimizer over an Algorithm, so Opacus can wrap it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from consensus.algorithms import Algorithm


class ConsensusOptimizer(torch.optim.Optimizer):
    """Feeds `p.grad` of the model's parameters to `algorithm.local_step`.

    `step()` reads p.grad at call time, so a wrapper that rewrites the gradients first
    (Opacus's DPOptimizer clips and noises them, then calls this `step()`) is respected.
    The learning rate belongs to the algorithm's schedule (eqs. 13-15): `param_groups[0]
    ["lr"]` mirrors it after every step and is not read back. Exchanges are not done here:
    the node's exchange loop calls `algorithm.outgoing` / `incoming` (no transport in the math).
    """

    def __init__(
        self, named_parameters: Iterable[tuple[str, Tensor]], *, algorithm: Algorithm
    ) -> None:
        named = list(named_parameters)
        self.algorithm = algorithm
        self.parameter_names = [name for name, _ in named]
        _check_same_tensors(named, algorithm)
        params = [p for _, p in named]
        super().__init__(params, {"lr": algorithm.learning_rate})
        self._sync_learning_rate()

    def _sync_learning_rate(self) -> None:
        for group in self.param_groups:
            group["lr"] = self.algorithm.learning_rate

    def _gradients(self) -> dict[str, Tensor]:
        params = self.param_groups[0]["params"]
        return {
            name: p.grad.detach() if p.grad is not None else torch.zeros_like(p)
            for name, p in zip(self.parameter_names, params, strict=True)
        }

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One local step of the algorithm with the current p.grad (None counts as zero)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.algorithm.local_step(self._gradients())
        self._sync_learning_rate()
        return loss

    def state_dict(self) -> dict:  # type: ignore[override]
        """The algorithm's state: {"tensors": ..., "meta": ...} (safetensors + JSON friendly)."""
        return self.algorithm.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:  # type: ignore[override]
        self.algorithm.load_state_dict(state_dict)
        self._sync_learning_rate()


def _check_same_tensors(named: list[tuple[str, Tensor]], algorithm: Algorithm) -> None:
    """The optimizer's parameters must be the algorithm's live tensors (same storage)."""
    names = [name for name, _ in named]
    if sorted(names) != sorted(algorithm.params):
        raise ValueError(
            f"optimizer parameters {sorted(names)} differ from the algorithm's "
            f"{sorted(algorithm.params)}: build both from the same model.named_parameters()"
        )
    for name, p in named:
        live = algorithm.params[name]
        if live.data_ptr() != p.data_ptr() or live.shape != p.shape:
            raise ValueError(
                f"algorithm.params[{name!r}] is not the model's parameter tensor; "
                "pass dict(model.named_parameters()) to make_algorithm"
            )
