"""The flat-buffer and in-place update paths against a plain per-tensor reference (eqs. 5-11)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import kernels
from consensus.flat_state import FlatState

F64 = torch.float64

# ---------------------------------------------------------------------------------------------
# Reference: docs/algorithm.md written out per tensor, in the equations' own order of terms.


def reference_primal_update(params, grads, duals, *, mu, eta, edges, rho, received, decay):
    """Eq. 5 (with eqs. 6 and 7) tensor by tensor."""
    out = {}
    for name, w in params.items():
        g = grads[name] + decay * w
        numerator, denominator = mu * w - g, mu
        for peer, (sign, edge_weight) in edges.items():
            c_ij = eta[name] * edge_weight
            numerator = numerator + c_ij * sign * duals[peer][name]
            denominator += c_ij
        if rho > 0 and received:
            numerator = numerator + rho * sum(m[name] for m in received.values()) / len(received)
            denominator += rho
        out[name] = numerator / denominator
    return out


def reference_outgoing_dual(params, dual, *, sign):
    """Eq. 8."""
    return {name: dual[name] - 2 * sign * w for name, w in params.items()}


# ---------------------------------------------------------------------------------------------
# Random problems: parameter dicts of mixed shapes, 1-3 neighbours.

shapes = st.lists(
    st.lists(st.integers(min_value=1, max_value=5), min_size=0, max_size=3),
    min_size=1,
    max_size=6,
)
scales = st.floats(min_value=0.05, max_value=20)


@st.composite
def problems(draw):
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    tensor_shapes = draw(shapes)
    names = [f"layer{k}.weight" for k in range(len(tensor_shapes))]

    def random_dict():
        return {
            n: torch.randn(s, generator=generator, dtype=F64)
            for n, s in zip(names, tensor_shapes, strict=True)
        }

    n_peers = draw(st.integers(min_value=1, max_value=3))
    peers = [f"N{k}" for k in range(n_peers)]
    signs = draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=n_peers, max_size=n_peers))
    weights = draw(st.lists(st.floats(0.1, 1.0), min_size=n_peers, max_size=n_peers))
    fan_in_scaling = draw(st.booleans())
    rho = draw(st.sampled_from([0.0, 0.0, draw(scales)]))
    return {
        "params": random_dict(),
        "grads": random_dict(),
        "duals": {p: random_dict() for p in peers},
        "received": {p: random_dict() for p in peers if rho > 0 and draw(st.booleans())},
        "edges": {p: (signs[k], weights[k]) for k, p in enumerate(peers)},
        "factors": {n: draw(st.sampled_from([1.0, 2.0, math.sqrt(3)])) for n in names}
        if fan_in_scaling
        else dict.fromkeys(names, 1.0),
        "mu": draw(scales),
        "consensus": draw(scales),
        "rho": rho,
        "decay": draw(st.sampled_from([0.0, 0.01])),
        "chunk_numel": draw(st.integers(min_value=1, max_value=80)),
    }


def assert_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-9, msg=name)


def flat_state(problem: dict, params: dict) -> FlatState:
    state = FlatState(
        params,
        edges=problem["edges"],
        factors=problem["factors"],
        keep_received=problem["rho"] > 0,
        chunk_numel=problem["chunk_numel"],
    )
    for peer, dual in problem["duals"].items():
        state.update_dual(peer, dual, theta=None)
    for peer, model in problem["received"].items():
        state.store_received(peer, model)
    return state


@settings(max_examples=80, deadline=None)
@given(problem=problems())
def test_flat_primal_step_and_outgoing_duals_match_the_reference(problem: dict) -> None:
    # Prepare: the node's parameters as views into one stacked tensor, as in the simulation.
    stacked = torch.stack([torch.cat([t.reshape(-1) for t in problem["params"].values()])] * 2)
    params, offset = {}, 0
    for name, tensor in problem["params"].items():
        params[name] = stacked[1, offset : offset + tensor.numel()].view(tensor.shape)
        offset += tensor.numel()
    other_node = stacked[0].clone()
    state = flat_state(problem, params)
    eta = {n: problem["consensus"] * s for n, s in problem["factors"].items()}
    common = {"mu": problem["mu"], "eta": eta, "edges": problem["edges"], "rho": problem["rho"]}

    # Execute
    state.primal_step(
        problem["grads"],
        mu=problem["mu"],
        consensus=problem["consensus"],
        rho=problem["rho"],
        weight_decay=problem["decay"],
    )

    # Assert: the reference to rounding, the dict kernels bit for bit (same roundings).
    args = (problem["params"], problem["grads"], problem["duals"])
    expected = reference_primal_update(
        *args, received=problem["received"], decay=problem["decay"], **common
    )
    assert_close(params, expected)
    decayed = kernels.add_weight_decay(
        problem["grads"], problem["params"], weight_decay=problem["decay"]
    )
    exact = kernels.ecl_primal_update(
        problem["params"], decayed, problem["duals"], received=problem["received"], **common
    )
    for name in params:
        assert torch.equal(params[name], exact[name]), name
    for peer, (sign, _) in problem["edges"].items():
        dual = problem["duals"][peer]
        assert_close(state.outgoing[peer], reference_outgoing_dual(expected, dual, sign=sign))
        exact_out = kernels.ecl_outgoing_dual(exact, dual, sign=sign)
        assert all(torch.equal(state.outgoing[peer][n], exact_out[n]) for n in params)
    assert torch.equal(stacked[0], other_node)  # the other node's row is untouched


@settings(max_examples=40, deadline=None)
@given(problem=problems(), theta=st.floats(min_value=0.05, max_value=1.0))
def test_dual_updates_match_the_reference(problem: dict, theta: float) -> None:
    # Eq. 9 copies y_ji; eq. 10 averages: (1 - theta) z_ij + theta y_ji.
    state = flat_state(problem, {n: t.clone() for n, t in problem["params"].items()})
    peer = next(iter(problem["edges"]))
    message = problem["grads"]  # any tensors of the right shapes
    state.update_dual(peer, message, theta=theta)
    old = problem["duals"][peer]
    assert_close(state.duals[peer], {n: (1 - theta) * old[n] + theta * message[n] for n in old})
    state.update_dual(peer, message, theta=None)
    assert_close(state.duals[peer], message)
    message["layer0.weight"].add_(1.0)  # the state holds a copy, not the message
    assert not torch.equal(state.duals[peer]["layer0.weight"], message["layer0.weight"])


@settings(max_examples=40, deadline=None)
@given(problem=problems(), learning_rate=scales)
def test_in_place_sgd_and_pairwise_average_match_the_reference(
    problem: dict, learning_rate: float
) -> None:
    params = {n: t.clone() for n, t in problem["params"].items()}
    names = list(params)
    grads = [problem["grads"][n] for n in names]
    kernels.sgd_update_([params[n] for n in names], grads, learning_rate=learning_rate)
    expected = {n: w - learning_rate * problem["grads"][n] for n, w in problem["params"].items()}
    assert_close(params, expected)
    assert all(
        torch.equal(params[n], t)
        for n, t in kernels.sgd_update(
            problem["params"], problem["grads"], learning_rate=learning_rate
        ).items()
    )
    other = problem["duals"][next(iter(problem["duals"]))]
    kernels.pairwise_average_([params[n] for n in names], [other[n] for n in names])
    assert_close(params, {n: (expected[n] + other[n]) / 2 for n in names})


def test_mixed_dtypes_and_fan_in_factors_get_their_own_blocks() -> None:
    # float32 and float64 parameters, two fan-in factors: four blocks; results as the dicts.
    generator = torch.Generator().manual_seed(0)
    params = {
        "a": torch.randn(3, 4, generator=generator),
        "b": torch.randn(5, generator=generator, dtype=F64),
        "c": torch.randn(2, 2, generator=generator),
        "d": torch.randn(6, generator=generator, dtype=F64),
    }
    grads = {n: torch.randn(t.shape, generator=generator, dtype=t.dtype) for n, t in params.items()}
    factors = {"a": 2.0, "b": 1.0, "c": 1.0, "d": 2.0}
    edges = {"N1": (1.0, 0.5)}
    expected = kernels.ecl_primal_update(
        params,
        grads,
        {"N1": {n: torch.zeros_like(t) for n, t in params.items()}},
        mu=2.0,
        eta={n: 0.5 * s for n, s in factors.items()},
        edges=edges,
    )
    state = FlatState(params, edges=edges, factors=factors, keep_received=False, chunk_numel=4)
    state.primal_step(grads, mu=2.0, consensus=0.5, rho=0.0, weight_decay=0.0)
    for name, value in expected.items():
        assert params[name].dtype == value.dtype and torch.equal(params[name], value), name


def test_received_mean_does_not_depend_on_the_order_of_arrival() -> None:
    # eq. 7 is summed in the node's peer order, so a restored state rounds as the original:
    # in float32, (1e8 + 1) - 1e8 = 0 but (-1e8 + 1e8) + 1 = 1.
    values = {"N1": 1e8, "N2": 1.0, "N3": -1e8}
    edges = {p: (1.0, 1.0) for p in values}
    steps = []
    for order in (["N1", "N2", "N3"], ["N3", "N1", "N2"]):
        w = torch.zeros(1)
        state = FlatState({"w": w}, edges=edges, factors={"w": 1.0}, keep_received=True)
        for peer in order:
            state.store_received(peer, {"w": torch.tensor([values[peer]])})
        # zero gradient and duals: w <- rho wbar / (mu + sum_j c_ij + rho) (eq. 5)
        state.primal_step({"w": torch.zeros(1)}, mu=1.0, consensus=1.0, rho=1.0, weight_decay=0)
        steps.append(w.item())
    assert steps == [0.0, 0.0]
