"""Golden numbers and properties of the pure update rules (docs/algorithm.md eqs. 3-12)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import kernels

F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_edge_sign_is_antisymmetric_and_rejects_self_edges() -> None:
    assert kernels.edge_sign(0, 3) == 1.0
    assert kernels.edge_sign(3, 0) == -1.0
    with pytest.raises(ValueError, match="distinct"):
        kernels.edge_sign(2, 2)


def test_fan_in_of_linear_conv_and_vector_tensors() -> None:
    assert kernels.fan_in(torch.zeros(10, 4)) == 4
    assert kernels.fan_in(torch.zeros(16, 8, 3, 3)) == 72
    assert kernels.fan_in(torch.zeros(10)) == 1  # bias / norm parameters
    assert kernels.fan_in(torch.zeros(())) == 1


def test_tensor_consensus_weights_scale_by_sqrt_fan_in_only_when_asked() -> None:
    params = {"conv": torch.zeros(16, 8, 3, 3), "bias": torch.zeros(16)}
    plain = kernels.tensor_consensus_weights(params, eta=2.0, fan_in_scaling=False)
    scaled = kernels.tensor_consensus_weights(params, eta=2.0, fan_in_scaling=True)
    assert plain == {"conv": 2.0, "bias": 2.0}
    assert scaled == {"conv": 2.0 * math.sqrt(72), "bias": 2.0}


def test_primal_update_golden_two_neighbours_and_proximity() -> None:
    # Node i with neighbours a (A_ia = +1, edge weight 0.5) and b (A_ib = -1, weight 0.25).
    # mu = 2, eta = 4 -> c_ia = 2, c_ib = 1; rho = 1 with one received model w_a = 3
    # (only a received: the mean is w_a, and rho enters the denominator once, eq. 7).
    # w = 1, g = 0.5, z_ia = 1, z_ib = 2:
    # numerator   = mu w - g + c_ia A_ia z_ia + c_ib A_ib z_ib + rho w_a
    #             = 2 - 0.5 + 2*1 + 1*(-1)*2 + 1*3 = 4.5
    # denominator = mu + c_ia + c_ib + rho = 2 + 2 + 1 + 1 = 6  ->  w = 0.75
    new = kernels.ecl_primal_update(
        {"w": t(1.0)},
        {"w": t(0.5)},
        {"a": {"w": t(1.0)}, "b": {"w": t(2.0)}},
        mu=2.0,
        eta={"w": 4.0},
        edges={"a": (1.0, 0.5), "b": (-1.0, 0.25)},
        rho=1.0,
        received={"a": {"w": t(3.0)}},
    )
    assert new["w"].item() == 0.75


def test_proximity_uses_the_mean_of_the_received_models() -> None:
    # Both neighbours received (w_a = 2, w_b = 4), zero duals, mu = 2, eta = 1, weights 1:
    # (mu w - g + rho mean(2, 4)) / (mu + c_ia + c_ib + rho) = (2 * 2 - 0 + 3) / 5 = 1.4
    new = kernels.ecl_primal_update(
        {"w": t(2.0)},
        {"w": t(0.0)},
        {"a": {"w": t(0.0)}, "b": {"w": t(0.0)}},
        mu=2.0,
        eta={"w": 1.0},
        edges={"a": (1.0, 1.0), "b": (-1.0, 1.0)},
        rho=1.0,
        received={"a": {"w": t(2.0)}, "b": {"w": t(4.0)}},
    )
    assert new["w"].item() == 7.0 / 5.0


def test_outgoing_dual_and_dual_updates_golden() -> None:
    # y_ij = z_ij - 2 A_ij w_i = 1 - 2 * (-1) * 0.25 = 1.5
    y = kernels.ecl_outgoing_dual({"w": t(0.25)}, {"w": t(1.0)}, sign=-1.0)
    assert y["w"].item() == 1.5
    # PDMM copies the peer's dual; ADMM with theta = 1/4: 0.75 * 2 + 0.25 * 6 = 3.
    assert kernels.pdmm_dual_update({"w": t(6.0)})["w"].item() == 6.0
    admm = kernels.admm_dual_update({"w": t(2.0)}, {"w": t(6.0)}, theta=0.25)
    assert admm["w"].item() == 3.0


def test_kernels_do_not_modify_their_inputs() -> None:
    w, g, z = t(1.0, 2.0), t(0.5, 0.5), t(3.0, 4.0)
    received = kernels.pdmm_dual_update({"w": z})
    received["w"].add_(1.0)
    kernels.ecl_primal_update(
        {"w": w}, {"w": g}, {"p": {"w": z}}, mu=1.0, eta={"w": 1.0}, edges={"p": (1.0, 1.0)}
    )
    assert torch.equal(w, t(1.0, 2.0)) and torch.equal(g, t(0.5, 0.5))
    assert torch.equal(z, t(3.0, 4.0))


def test_sgd_pairwise_and_weighted_average_golden() -> None:
    assert kernels.sgd_update({"w": t(1.0)}, {"w": t(4.0)}, learning_rate=0.25)["w"].item() == 0
    assert kernels.pairwise_average({"w": t(1.0)}, {"w": t(4.0)})["w"].item() == 2.5
    # (10 * 1 + 30 * 5) / 40 = 4
    average = kernels.weighted_average([{"w": t(1.0)}, {"w": t(5.0)}], [10, 30])
    assert average["w"].item() == 4.0
    with pytest.raises(ValueError, match="positive total"):
        kernels.weighted_average([{"w": t(1.0)}], [0])


def test_weight_decay_adds_an_l2_gradient() -> None:
    decayed = kernels.add_weight_decay({"w": t(1.0)}, {"w": t(2.0)}, weight_decay=0.5)
    assert decayed["w"].item() == 2.0


finite = st.floats(min_value=-10, max_value=10, allow_nan=False, allow_subnormal=False)
positive = st.floats(min_value=0.01, max_value=10)


@settings(max_examples=60, deadline=None)
@given(
    w=finite,
    z=st.lists(finite, min_size=1, max_size=4),
    edge_weights=st.lists(positive, min_size=4, max_size=4),
    signs=st.lists(st.sampled_from([1.0, -1.0]), min_size=4, max_size=4),
    mu=positive,
    eta=positive,
    rho=positive,
)
def test_proximity_does_not_move_a_fixed_point(
    w: float,
    z: list[float],
    edge_weights: list[float],
    signs: list[float],
    mu: float,
    eta: float,
    rho: float,
) -> None:
    # If w is stationary for eq. 5 without rho (g = sum_j c_ij (A_ij z_ij - w)), then with
    # every received model equal to w the rho terms cancel: w stays (docs/algorithm.md sec. 6.3).
    peers = [f"p{k}" for k in range(len(z))]
    edges = {p: (signs[k], edge_weights[k]) for k, p in enumerate(peers)}
    duals = {p: {"w": t(z[k])} for k, p in enumerate(peers)}
    g = sum(eta * edge_weights[k] * (signs[k] * z[k] - w) for k in range(len(z)))
    common = {"mu": mu, "eta": {"w": eta}, "edges": edges}
    plain = kernels.ecl_primal_update({"w": t(w)}, {"w": t(g)}, duals, **common)
    received = {p: {"w": t(w)} for p in peers[:1]}
    with_rho = kernels.ecl_primal_update(
        {"w": t(w)}, {"w": t(g)}, duals, rho=rho, received=received, **common
    )
    assert plain["w"].item() == pytest.approx(w, abs=1e-9)
    assert with_rho["w"].item() == pytest.approx(w, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(w_i=finite, w_j=finite, z_ij=finite, z_ji=finite)
def test_pdmm_swap_without_a_step_is_idempotent(
    w_i: float, w_j: float, z_ij: float, z_ji: float
) -> None:
    # After one swap z_ij = y_ji; swapping again the same (unchanged) y's changes nothing.
    y_ij = kernels.ecl_outgoing_dual({"w": t(w_i)}, {"w": t(z_ij)}, sign=1.0)
    y_ji = kernels.ecl_outgoing_dual({"w": t(w_j)}, {"w": t(z_ji)}, sign=-1.0)
    once = kernels.pdmm_dual_update(y_ji)
    twice = kernels.pdmm_dual_update(y_ji)
    assert torch.equal(once["w"], twice["w"])
    # and the pair (z_ij, z_ji) after a swap satisfies z_ij - z_ji = 2 (w_i + w_j) - (z_ij - z_ji)
    new_ij, new_ji = once["w"].item(), kernels.pdmm_dual_update(y_ij)["w"].item()
    assert new_ij - new_ji == pytest.approx(2 * (w_i + w_j) - (z_ij - z_ji), abs=1e-9)


def test_weight_decay_into_rounds_like_the_dict_form_and_refuses_to_alias_the_gradient() -> None:
    # product then sum, two roundings, as g + weight_decay * w (a fused multiply-add differs)
    generator = torch.Generator().manual_seed(0)
    g, w = torch.randn(1000, generator=generator), torch.randn(1000, generator=generator)
    out = torch.empty(1000)
    kernels.add_weight_decay_into(out, g, w, weight_decay=0.013)
    assert torch.equal(out, g + 0.013 * w)
    with pytest.raises(ValueError, match="cannot be grad"):
        kernels.add_weight_decay_into(g, g, w, weight_decay=0.013)
