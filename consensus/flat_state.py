"""An ECL node's duals, outgoing duals and received models in flat buffers, updated by chunks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from consensus import kernels

# Elements per chunk. A chunk's primal step makes 7 passes over up to 8 slices (g, w, the
# scratch, and a dual and an outgoing dual per neighbour); at 2**18 elements (1 MiB in
# float32) they stay in the L3 cache from one pass to the next, so main memory sees each byte
# about once instead of once per pass. On DenseNet-121 (7M parameters, 1 thread) 2**18 and
# 2**19 were fastest, 2**16 ~10% and the whole model in one chunk ~1.5x slower.
CHUNK_NUMEL = 1 << 18
# Below this mean parameter size (elements) a chunk's gradient term is one foreach copy and
# one flat multiply-add instead of one call per parameter: the extra pass over a cached chunk
# costs less than a Python call per small tensor (a compact network's 49 tensors of ~900).
SMALL_PARAM_NUMEL = 4096


@dataclass(frozen=True)
class _Chunk:
    """Consecutive parameters of one block, as flat slices of every buffer."""

    names: tuple[str, ...]
    params: tuple[Tensor, ...]  # the live parameter tensors
    factor: float  # s_p of eq. 6, the same for the whole block
    new: Tensor  # scratch: g - mu w, then the new w
    new_views: tuple[Tensor, ...]  # `new` cut into the parameters' shapes
    duals: tuple[Tensor, ...]  # z_ij, one slice per peer
    outgoing: tuple[Tensor, ...]  # y_ij, one slice per peer
    mean_received: Tensor | None  # wbar_i (eq. 7), kept only when rho > 0
    flat_params: Tensor | None  # the live parameters as one flat slice, when they are one
    small_params: bool  # many small tensors: gradient term as foreach copy + flat add


class _Layout:
    """Where each parameter lives in the flat buffers: one block per (dtype, device, s_p)."""

    def __init__(self, params: Mapping[str, Tensor], factors: Mapping[str, float]) -> None:
        groups: dict[tuple[torch.dtype, torch.device, float], list[str]] = {}
        for name, tensor in params.items():
            groups.setdefault((tensor.dtype, tensor.device, float(factors[name])), []).append(name)
        self.keys = list(groups)
        self.block_names = list(groups.values())
        self.shapes = {name: tensor.shape for name, tensor in params.items()}
        self.spans: dict[str, tuple[int, int, int]] = {}  # name -> (block, start, stop)
        self.sizes: list[int] = []
        for block, names in enumerate(self.block_names):
            offset = 0
            for name in names:
                self.spans[name] = (block, offset, offset + params[name].numel())
                offset += params[name].numel()
            self.sizes.append(offset)

    def zeros(self) -> list[Tensor]:
        """One zero flat tensor per block."""
        return [
            torch.zeros(size, dtype=dtype, device=device)
            for (dtype, device, _), size in zip(self.keys, self.sizes, strict=True)
        ]

    def named_views(self, blocks: Sequence[Tensor]) -> dict[str, Tensor]:
        """{name: view of its block shaped like the parameter}, in the parameters' order."""
        return {
            name: blocks[block][start:stop].view(self.shapes[name])
            for name, (block, start, stop) in self.spans.items()
        }

    def cut(self, flat: Tensor, names: Sequence[str]) -> tuple[Tensor, ...]:
        """`flat` (a chunk's slice, starting at names[0]) cut into the parameters' shapes."""
        origin = self.spans[names[0]][1]
        return tuple(
            flat[self.spans[n][1] - origin : self.spans[n][2] - origin].view(self.shapes[n])
            for n in names
        )

    def runs(self, chunk_numel: int) -> list[tuple[int, list[str]]]:
        """(block, names): consecutive parameters of ~`chunk_numel` elements (at least one)."""
        runs: list[tuple[int, list[str]]] = []
        for block, names in enumerate(self.block_names):
            run: list[str] = []
            for name in names:
                if run and self.spans[name][2] - self.spans[run[0]][1] > chunk_numel:
                    runs.append((block, run))
                    run = []
                run.append(name)
            runs.append((block, run))
        return runs

    def extent(self, names: Sequence[str]) -> tuple[int, int]:
        """(start, stop) of the consecutive `names` in their block."""
        return self.spans[names[0]][1], self.spans[names[-1]][2]


def _flat_view(tensors: Sequence[Tensor]) -> Tensor | None:
    """One flat tensor over `tensors` when they lie back to back in one storage, else None.

    Parameters of a `ModelStack` do (one flat buffer per model); a module's own parameters
    usually do not, and then the primal step copies its result into them tensor by tensor.
    """
    first = tensors[0]
    position = first.storage_offset()
    for tensor in tensors:
        if (
            not tensor.is_contiguous()
            or tensor.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
            or tensor.storage_offset() != position
        ):
            return None
        position += tensor.numel()
    return first.detach().as_strided((position - first.storage_offset(),), (1,))


class FlatState:
    """z_ij, y_ij and received models of one ECL node, and their updates (eqs. 5 and 7-10).

    Each is one flat tensor per block (the parameters of one dtype, device and fan-in factor
    s_p); `duals[peer][name]`, `outgoing[peer][name]` and `received[peer][name]` are views
    shaped like the parameters, valid for the object's life: every update is in place and
    these dicts are never rebound. The primal step runs chunk by chunk over flat slices, a
    few torch calls per chunk instead of several per parameter, and allocates nothing.
    """

    def __init__(
        self,
        params: Mapping[str, Tensor],
        *,
        edges: Mapping[str, tuple[float, float]],
        factors: Mapping[str, float],
        keep_received: bool,
        chunk_numel: int = CHUNK_NUMEL,
        fused: bool = True,
    ) -> None:
        self.params = dict(params)
        self.fused = fused  # False: the pass-per-term reference path (tests, benchmarks)
        self.edges = dict(edges)  # peer -> (A_ij, e_ij), in the node's peer order
        self._signs = [sign for sign, _ in self.edges.values()]
        self._layout = _Layout(self.params, factors)
        flat_duals = {peer: self._layout.zeros() for peer in self.edges}
        flat_outgoing = {peer: self._layout.zeros() for peer in self.edges}
        self.duals = {peer: self._layout.named_views(f) for peer, f in flat_duals.items()}
        self.outgoing = {peer: self._layout.named_views(f) for peer, f in flat_outgoing.items()}
        self.received: dict[str, dict[str, Tensor]] = {}  # R_i: the peers received so far
        self._flat_received: dict[str, list[Tensor]] = {}
        self._flat_mean: list[Tensor] | None = None
        if keep_received:
            self._flat_received = {peer: self._layout.zeros() for peer in self.edges}
            self._flat_mean = self._layout.zeros()
        self._chunks = self._build_chunks(flat_duals, flat_outgoing, chunk_numel)
        self.refresh_outgoing()

    def _build_chunks(
        self,
        flat_duals: Mapping[str, list[Tensor]],
        flat_outgoing: Mapping[str, list[Tensor]],
        chunk_numel: int,
    ) -> list[_Chunk]:
        runs = self._layout.runs(chunk_numel)
        sizes: dict[tuple[torch.dtype, torch.device], int] = {}
        for block, names in runs:
            start, stop = self._layout.extent(names)
            key = self._layout.keys[block][:2]
            sizes[key] = max(sizes.get(key, 0), stop - start)
        # one scratch buffer per dtype and device, shared by all chunks: it stays in cache
        scratch = {
            key: torch.empty(size, dtype=key[0], device=key[1]) for key, size in sizes.items()
        }
        chunks = []
        for block, names in runs:
            dtype, device, factor = self._layout.keys[block]
            start, stop = self._layout.extent(names)
            new = scratch[(dtype, device)][: stop - start]
            chunks.append(
                _Chunk(
                    names=tuple(names),
                    params=tuple(self.params[name] for name in names),
                    factor=factor,
                    new=new,
                    new_views=self._layout.cut(new, names),
                    duals=tuple(flat_duals[p][block][start:stop] for p in self.edges),
                    outgoing=tuple(flat_outgoing[p][block][start:stop] for p in self.edges),
                    mean_received=None
                    if self._flat_mean is None
                    else self._flat_mean[block][start:stop],
                    flat_params=_flat_view([self.params[name] for name in names]),
                    small_params=(stop - start) < SMALL_PARAM_NUMEL * len(names),
                )
            )
        return chunks

    @torch.no_grad()
    def primal_step(
        self,
        grads: Mapping[str, Tensor],
        *,
        mu: float,
        consensus: float,
        rho: float,
        weight_decay: float,
    ) -> None:
        """Eq. 5 into the live parameters, then eq. 8 into the outgoing duals.

        c_ij = consensus * s_p * e_ij (eq. 6); the rho term only once a model was received.
        The same roundings as kernels.ecl_primal_update on the dicts, bit for bit, on either
        path: `fused` (default) makes fewer passes over memory and fewer calls, the
        reference path (`fused=False`) one kernel call per term, as the equations read.
        """
        proximity = rho if self.received else 0.0
        for chunk in self._chunks:
            eta = consensus * chunk.factor
            weights = [(eta * edge_weight, sign) for sign, edge_weight in self.edges.values()]
            terms = {"mu": mu, "weights": weights, "rho": proximity}
            if not self.fused or chunk.flat_params is None:
                self._reference_chunk(chunk, grads, mu=mu, weight_decay=weight_decay)
                kernels.ecl_consensus_terms_(
                    chunk.new, chunk.duals, mean_received=chunk.mean_received, **terms
                )
                torch._foreach_copy_(chunk.params, chunk.new_views)
                self._outgoing_duals(chunk, chunk.new)
                continue
            self._gradient_term(chunk, grads, mu=mu, weight_decay=weight_decay)
            denominator = kernels.ecl_consensus_sum_(
                chunk.new, chunk.duals, mean_received=chunk.mean_received, **terms
            )
            # one pass: the quotient lands in the parameters, the copy pass is gone
            torch.div(chunk.new, -denominator, out=chunk.flat_params)
            self._outgoing_duals(chunk, chunk.flat_params)

    def _reference_chunk(
        self, chunk: _Chunk, grads: Mapping[str, Tensor], *, mu: float, weight_decay: float
    ) -> None:
        """g (+ decay w) - mu w into the chunk's scratch, one call per parameter."""
        for new, param, name in zip(chunk.new_views, chunk.params, chunk.names, strict=True):
            grad = grads[name]
            if weight_decay != 0:
                grad = kernels.add_weight_decay_into(new, grad, param, weight_decay=weight_decay)
            kernels.ecl_gradient_term_into(new, param, grad, mu=mu)

    def _gradient_term(
        self, chunk: _Chunk, grads: Mapping[str, Tensor], *, mu: float, weight_decay: float
    ) -> None:
        """As `_reference_chunk` (same roundings), in two flat calls for many small tensors."""
        if not chunk.small_params:
            self._reference_chunk(chunk, grads, mu=mu, weight_decay=weight_decay)
            return
        flat_w = chunk.flat_params
        chunk_grads = [grads[name] for name in chunk.names]
        if weight_decay != 0:  # (w * decay) + g, rounded twice as add_weight_decay_into
            torch.mul(flat_w, weight_decay, out=chunk.new)
            torch._foreach_add_(list(chunk.new_views), chunk_grads)
        else:
            torch._foreach_copy_(list(chunk.new_views), chunk_grads)
        chunk.new.add_(flat_w, alpha=-mu)  # = torch.add(g, w, alpha=-mu): same kernel

    @torch.no_grad()
    def refresh_outgoing(self) -> None:
        """y_ij <- z_ij - 2 A_ij w_i (eq. 8) for every peer, from the current parameters."""
        for chunk in self._chunks:
            torch._foreach_copy_(chunk.new_views, chunk.params)
            self._outgoing_duals(chunk, chunk.new)

    def _outgoing_duals(self, chunk: _Chunk, params: Tensor) -> None:
        for out, dual, sign in zip(chunk.outgoing, chunk.duals, self._signs, strict=True):
            kernels.ecl_outgoing_dual_into(out, params, dual, sign=sign)

    @torch.no_grad()
    def update_dual(
        self, peer: str, received_dual: Mapping[str, Tensor], *, theta: float | None
    ) -> None:
        """z_ij <- y_ji (eq. 9) when theta is None, else (1 - theta) z_ij + theta y_ji (eq. 10)."""
        duals = list(self.duals[peer].values())
        incoming = [received_dual[name] for name in self.duals[peer]]
        if theta is None:
            kernels.pdmm_dual_update_(duals, incoming)
        else:
            kernels.admm_dual_update_(duals, incoming, theta=theta)

    @torch.no_grad()
    def store_received(self, peer: str, model: Mapping[str, Tensor]) -> None:
        """Keep `peer`'s model (a copy) and update the mean over the received peers (eq. 7)."""
        if self._flat_mean is None:
            raise ValueError("this node keeps no received models: proximity_weight is 0")
        slots = self._layout.named_views(self._flat_received[peer])
        torch._foreach_copy_(list(slots.values()), [model[name] for name in slots])
        self.received[peer] = slots
        # summed in the node's peer order, whatever the order of arrival: a resumed run
        # (received peers restored sorted) rounds exactly as the uninterrupted one
        senders = [p for p in self.edges if p in self.received]
        for block, mean in enumerate(self._flat_mean):
            kernels.mean_into(mean, [self._flat_received[p][block] for p in senders])

    def load(
        self,
        *,
        duals: Mapping[str, Mapping[str, Tensor]],
        outgoing: Mapping[str, Mapping[str, Tensor]],
        received: Mapping[str, Mapping[str, Tensor]],
    ) -> None:
        """Copy a checkpoint's tensors into the buffers; every view stays valid."""
        with torch.no_grad():
            for peer in self.edges:
                for store, saved in ((self.duals, duals), (self.outgoing, outgoing)):
                    targets = store[peer]
                    torch._foreach_copy_(list(targets.values()), [saved[peer][n] for n in targets])
        self.received.clear()
        for peer, model in received.items():
            self.store_received(peer, model)
