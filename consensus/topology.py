"""Communication graphs (ring, full, random k-regular, edge list) and symmetric edge weights."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


class TopologyError(ValueError):
    """A graph the consensus methods cannot use; the message says what to change."""


def node_names(count: int, *, prefix: str = "N") -> tuple[str, ...]:
    """("N1", ..., "N<count>"): the default hospital names."""
    if count < 1:
        raise TopologyError("a topology needs at least one node")
    return tuple(f"{prefix}{k}" for k in range(1, count + 1))


@dataclass(frozen=True)
class Topology:
    """An undirected simple connected graph. `nodes` order is the edge-sign order (eq. 3).

    Edges are stored once each, as (a, b) with a before b in `nodes`.
    """

    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    _adjacency: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rank = _validated_rank(self.nodes)
        canonical: set[tuple[str, str]] = set()
        for a, b in self.edges:
            if a not in rank or b not in rank:
                raise TopologyError(f"edge ({a}, {b}) names a node not in {self.nodes}")
            if a == b:
                raise TopologyError(f"self loop on {a}: remove it")
            canonical.add((a, b) if rank[a] < rank[b] else (b, a))
        edges = tuple(sorted(canonical, key=lambda e: (rank[e[0]], rank[e[1]])))
        adjacency: dict[str, list[str]] = {n: [] for n in self.nodes}
        for a, b in edges:
            adjacency[a].append(b)
            adjacency[b].append(a)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(
            self,
            "_adjacency",
            {n: tuple(sorted(p, key=rank.__getitem__)) for n, p in adjacency.items()},
        )
        if not _is_connected(self.nodes, self._adjacency):
            raise TopologyError("graph is not connected: every hospital needs a path to the others")

    def neighbours(self, node: str) -> tuple[str, ...]:
        """The peers of `node`, in node order."""
        if node not in self._adjacency:
            raise TopologyError(f"unknown node {node!r}; nodes are {self.nodes}")
        return self._adjacency[node]

    def degree(self, node: str) -> int:
        return len(self.neighbours(node))

    def is_regular(self) -> bool:
        return len({len(p) for p in self._adjacency.values()}) == 1

    def edge_weights(self, node: str) -> dict[str, float]:
        """Symmetric relative edge weights 1 / max(|N_i|, |N_j|) (eq. 6).

        Equal to 1 / |N_i| on regular graphs; both ends of an edge get the same weight, which
        the PDMM fixed point needs (docs/algorithm.md sec. 6.1).
        """
        own = self.degree(node)
        return {peer: 1.0 / max(own, self.degree(peer)) for peer in self.neighbours(node)}


def _validated_rank(nodes: Sequence[str]) -> dict[str, int]:
    if len(nodes) < 1:
        raise TopologyError("a topology needs at least one node")
    rank = {name: k for k, name in enumerate(nodes)}
    if len(rank) != len(nodes):
        raise TopologyError(f"node names must be unique, got {list(nodes)}")
    for name in nodes:
        if not name or "/" in name or not name.isprintable():
            raise TopologyError(f"node name {name!r}: use printable names without '/'")
    return rank


def _is_connected(nodes: Sequence[str], adjacency: dict[str, tuple[str, ...]]) -> bool:
    seen = {nodes[0]}
    frontier = [nodes[0]]
    while frontier:
        for peer in adjacency[frontier.pop()]:
            if peer not in seen:
                seen.add(peer)
                frontier.append(peer)
    return len(seen) == len(nodes)


def ring(nodes: Sequence[str]) -> Topology:
    """Each node linked to the next one, the last to the first (a path for 2 nodes)."""
    n = len(nodes)
    return Topology(tuple(nodes), tuple((nodes[k], nodes[(k + 1) % n]) for k in range(n) if n > 1))


def full(nodes: Sequence[str]) -> Topology:
    """Every pair of nodes linked."""
    return Topology(
        tuple(nodes), tuple((a, b) for k, a in enumerate(nodes) for b in nodes[k + 1 :])
    )


def from_edges(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> Topology:
    """An explicit edge list, e.g. from a hospital network's configuration."""
    return Topology(tuple(nodes), tuple((a, b) for a, b in edges))


def random_regular(nodes: Sequence[str], *, degree: int, seed: int) -> Topology:
    """A seeded random connected `degree`-regular graph.

    Starts from a circulant graph and applies random degree-preserving double-edge swaps,
    keeping only swaps that leave the graph simple and connected.
    """
    n = len(nodes)
    if not 1 <= degree < n or (n * degree) % 2:
        raise TopologyError(f"no {degree}-regular graph on {n} nodes: need 1 <= k < n, n*k even")
    edges = _circulant(n, degree)
    rng = np.random.default_rng(seed)
    for _ in range(10 * len(edges)):
        first, second = rng.choice(len(edges), size=2, replace=False)
        (a, b), (c, d) = edges[first], edges[second]
        if rng.random() < 0.5:
            c, d = d, c
        proposal = {frozenset((a, d)), frozenset((c, b))}
        if len({a, b, c, d}) < 4 or proposal & set(edges):
            continue
        candidate = [e for k, e in enumerate(edges) if k not in (first, second)]
        candidate += [frozenset((a, d)), frozenset((c, b))]
        if _is_connected(range(n), _index_adjacency(n, candidate)):
            edges = candidate
    return Topology(tuple(nodes), tuple(tuple(nodes[k] for k in sorted(e)) for e in edges))


def _circulant(n: int, degree: int) -> list[frozenset[int]]:
    edges = {frozenset((k, (k + s) % n)) for k in range(n) for s in range(1, degree // 2 + 1)}
    if degree % 2:
        edges |= {frozenset((k, k + n // 2)) for k in range(n // 2)}
    return sorted(edges, key=sorted)


def _index_adjacency(n: int, edges: Iterable[frozenset[int]]) -> dict[int, tuple[int, ...]]:
    adjacency: dict[int, list[int]] = {k: [] for k in range(n)}
    for edge in edges:
        a, b = tuple(edge)
        adjacency[a].append(b)
        adjacency[b].append(a)
    return {k: tuple(v) for k, v in adjacency.items()}
