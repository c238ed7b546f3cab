"""Graphs: ring, full, random k-regular, edge lists, validation and symmetric edge weights."""

from __future__ import annotations

import pytest

from consensus.topology import TopologyError, from_edges, full, node_names, random_regular, ring

NODES = node_names(8)


def test_ring_and_full_neighbours() -> None:
    assert ring(NODES).neighbours("N1") == ("N2", "N8")
    assert len(ring(NODES).edges) == 8
    assert len(full(NODES).edges) == 28
    assert ring(NODES[:2]).edges == (("N1", "N2"),)


@pytest.mark.parametrize("degree", [2, 3, 4, 5])
def test_random_regular_is_seeded_regular_and_connected(degree: int) -> None:
    graph = random_regular(NODES, degree=degree, seed=4)
    assert graph == random_regular(NODES, degree=degree, seed=4)
    assert all(graph.degree(n) == degree for n in NODES)
    assert graph.is_regular()
    assert len(graph.edges) == 8 * degree // 2


def test_random_regular_differs_between_seeds() -> None:
    graphs = {random_regular(node_names(12), degree=3, seed=s).edges for s in range(5)}
    assert len(graphs) > 1


def test_edges_are_canonical_in_node_order() -> None:
    graph = from_edges(("b", "a", "c"), [("a", "b"), ("c", "a"), ("b", "a")])
    assert graph.edges == (("b", "a"), ("a", "c"))


def test_symmetric_edge_weights_on_an_irregular_graph() -> None:
    star = from_edges(NODES, [("N1", n) for n in NODES[1:]])
    assert not star.is_regular()
    # 1 / max(|N_i|, |N_j|): the hub has degree 7, a leaf 1; both ends of an edge agree
    assert star.edge_weights("N1")["N5"] == star.edge_weights("N5")["N1"] == 1 / 7
    for a, b in star.edges:
        assert star.edge_weights(a)[b] == star.edge_weights(b)[a]
    assert ring(NODES).edge_weights("N3") == {"N2": 0.5, "N4": 0.5}


@pytest.mark.parametrize(
    ("nodes", "edges", "message"),
    [
        (("a", "b", "c"), [("a", "b")], "not connected"),
        (("a", "b"), [("a", "a"), ("a", "b")], "self loop"),
        (("a", "a"), [("a", "a")], "unique"),
        (("a", "b"), [("a", "z")], "not in"),
        (("a/1", "b"), [("a/1", "b")], "without '/'"),
    ],
)
def test_invalid_graphs_are_refused(nodes: tuple, edges: list, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        from_edges(nodes, edges)


def test_impossible_regular_graph_is_refused() -> None:
    with pytest.raises(TopologyError, match="regular"):
        random_regular(node_names(7), degree=3, seed=0)
