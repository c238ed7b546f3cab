"""The fused ECL primal step against the pass-per-term reference path: the same bits."""

from __future__ import annotations

import pytest
import torch

from consensus.flat_state import SMALL_PARAM_NUMEL, FlatState

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "big.weight": (SMALL_PARAM_NUMEL + 7,)}


def _flat_params(generator: torch.Generator, *, copies: int) -> list[dict[str, torch.Tensor]]:
    """`copies` models whose parameters lie back to back in the rows of one buffer."""
    sizes = [torch.Size(s).numel() for s in SHAPES.values()]
    flat = torch.randn(copies, sum(sizes), generator=generator)
    models = []
    for row in flat:
        pieces = row.split(sizes)
        models.append({n: p.view(s) for (n, s), p in zip(SHAPES.items(), pieces, strict=True)})
    return models


def fused_layout(params: dict[str, torch.Tensor]) -> bool:
    """True for parameters stored back to back (the fused path's flat slices apply)."""
    first = next(iter(params.values()))
    return all(t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
               for t in params.values())  # fmt: skip


def _run(params: dict, *, fused: bool, decay: float, rho: float, chunk_numel: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    edges = {"N1": (1.0, 0.5), "N3": (-1.0, 0.25), "N4": (1.0, 0.25)}
    state = FlatState(
        params,
        edges=edges,
        factors={n: 1.0 if n != "conv.weight" else 3.0 for n in params},
        keep_received=rho > 0,
        chunk_numel=chunk_numel,
        fused=fused,
    )

    def like() -> dict[str, torch.Tensor]:
        return {n: torch.randn(t.shape, generator=generator) for n, t in params.items()}

    for step in range(3):
        for peer in edges:
            state.update_dual(peer, like(), theta=None if step % 2 else 0.5)
        if rho > 0:
            state.store_received("N3", like())
        state.primal_step(like(), mu=2.5, consensus=1.25, rho=rho, weight_decay=decay)
    if fused_layout(params):  # every chunk runs on flat slices of the parameters
        assert all(chunk.flat_params is not None for chunk in state._chunks)
    outgoing = {p: {n: t.clone() for n, t in d.items()} for p, d in state.outgoing.items()}
    return {n: t.clone() for n, t in params.items()}, outgoing


@pytest.mark.parametrize("decay", [0.0, 0.01])
@pytest.mark.parametrize("rho", [0.0, 0.3])
@pytest.mark.parametrize("chunk_numel", [16, 1 << 18])
def test_fused_step_gives_the_reference_bits(decay: float, rho: float, chunk_numel: int) -> None:
    # Prepare: the same flat-stored model twice (row 1 of two stacked models, as ModelStack)
    reference_params = _flat_params(torch.Generator().manual_seed(7), copies=2)[1]
    fused_stack = _flat_params(torch.Generator().manual_seed(7), copies=2)
    fused_params = fused_stack[1]
    other_row = {n: t.clone() for n, t in fused_stack[0].items()}
    common = {"decay": decay, "rho": rho, "chunk_numel": chunk_numel, "seed": 3}

    # Execute
    reference, reference_out = _run(reference_params, fused=False, **common)
    fused, fused_out = _run(fused_params, fused=True, **common)

    # Assert: bit for bit, and the other model's row untouched
    for name in reference:
        assert torch.equal(fused[name], reference[name]), name
    for peer, tensors in reference_out.items():
        assert all(torch.equal(fused_out[peer][n], t) for n, t in tensors.items()), peer
    assert all(torch.equal(fused_stack[0][n], t) for n, t in other_row.items())


def test_parameters_that_are_not_back_to_back_take_the_reference_path() -> None:
    # A module's own parameters are separate allocations: no flat view, same results.
    generator = torch.Generator().manual_seed(1)
    separate = {n: torch.randn(s, generator=generator) for n, s in SHAPES.items()}
    copy = {n: t.clone() for n, t in separate.items()}
    state = FlatState(separate, edges={"N1": (1.0, 1.0)}, factors=dict.fromkeys(SHAPES, 1.0),
                      keep_received=False)  # fmt: skip
    assert state.fused and all(chunk.flat_params is None for chunk in state._chunks)

    fused, _ = _run(separate, fused=True, decay=0.0, rho=0.0, chunk_numel=64, seed=2)
    reference, _ = _run(copy, fused=False, decay=0.0, rho=0.0, chunk_numel=64, seed=2)

    assert all(torch.equal(fused[n], reference[n]) for n in SHAPES)
