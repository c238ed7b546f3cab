"""Pure update rules of ECL, gossip SGD, FedAvg, momentum, tracking (docs/algorithm.md eqs. 3-27).

Symbols follow docs/algorithm.md and are used only in this module:
  mu    inverse step size, 1 / learning_rate            (eq. 5)
  eta   consensus weight of one tensor, before edges     (eq. 6)
  c_ij  per-edge weight eta * edge_weight[j]             (eq. 6)
  rho   proximity weight to the neighbours' last models  (eq. 7)
  A_ij  edge sign, +1 if i precedes j in the node order  (eq. 3)
  theta ADMM relaxation                                  (eq. 10)
  z_ij  dual held by i for edge (i, j); y_ij its outgoing dual (eq. 8)
  b     heavy-ball momentum                              (eq. 24)
  t_i   gradient tracker of node i (DSGT's y_i)         (eqs. 25-27)
Each rule comes in up to three forms that compute the same numbers with the same roundings:
- on {name: Tensor} dicts: returns new tensors, never modifies its arguments;
- `*_into(out, ...)`: one elementwise update written into `out` (None allocates). The tensor
  is one parameter, or a flat slice of a node's buffers covering many parameters, so that
  one call does the work of hundreds (`consensus.flat_state`);
- `*_(first, ...)`: updates its first argument in place, allocating nothing: a tensor, or
  a list of tensors at once (torch._foreach_* ops).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

TensorDict = dict[str, Tensor]
TensorList = Sequence[Tensor]


def edge_sign(node_rank: int, peer_rank: int) -> float:
    """A_ij (eq. 3): +1 if node i precedes peer j in the agreed node order, else -1."""
    if node_rank == peer_rank:
        raise ValueError("an edge needs two distinct nodes (same rank given twice)")
    return 1.0 if node_rank < peer_rank else -1.0


def fan_in(tensor: Tensor) -> int:
    """Inputs feeding one output unit: numel / shape[0] for weights (ndim >= 2), else 1."""
    if tensor.ndim < 2:
        return 1
    return tensor.numel() // tensor.shape[0]


def tensor_consensus_weights(
    params: Mapping[str, Tensor], *, eta: float, fan_in_scaling: bool
) -> dict[str, float]:
    """eta per tensor (eq. 6): eta, or eta * sqrt(fan_in) when `fan_in_scaling`."""
    if not fan_in_scaling:
        return {name: eta for name in params}
    return {name: eta * math.sqrt(fan_in(t)) for name, t in params.items()}


def add_weight_decay(
    grads: Mapping[str, Tensor], params: Mapping[str, Tensor], *, weight_decay: float
) -> TensorDict:
    """g + weight_decay * w: the gradient of f_i plus an l2 term."""
    if weight_decay == 0:
        return dict(grads)
    return {
        name: add_weight_decay_into(None, grads[name], params[name], weight_decay=weight_decay)
        for name in grads
    }


def add_weight_decay_into(
    out: Tensor | None, grad: Tensor, param: Tensor, *, weight_decay: float
) -> Tensor:
    """g + weight_decay * w into `out` (not `grad`; None allocates).

    Rounded twice, product then sum, as `grad + weight_decay * param` always was (a fused
    multiply-add would change results in the last bit).
    """
    if out is grad:
        raise ValueError("add_weight_decay_into writes w * weight_decay first: out cannot be grad")
    return torch.mul(param, weight_decay, out=out).add_(grad)


def ecl_primal_update(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    duals: Mapping[str, Mapping[str, Tensor]],
    *,
    mu: float,
    eta: Mapping[str, float],
    edges: Mapping[str, tuple[float, float]],
    rho: float = 0.0,
    received: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> TensorDict:
    """Linearised PDMM primal step (eq. 5), one tensor at a time.

    w <- (mu w - g + sum_j c_ij A_ij z_ij + rho mean_{j recv} w_j) / (mu + sum_j c_ij + rho [recv])

    `duals[peer][name]` is z_ij; `edges[peer]` = (A_ij, edge_weight_ij) so c_ij =
    eta[name] * edge_weight_ij; `received[peer][name]` the peer's last model (eq. 7).
    """
    received = received or {}
    out: TensorDict = {}
    for name, weight in params.items():
        mean = None
        if rho > 0 and received:
            mean = mean_into(None, [model[name] for model in received.values()])
        out[name] = ecl_primal_update_into(
            None,
            weight,
            grads[name],
            [duals[peer][name] for peer in edges],
            mu=mu,
            weights=[(eta[name] * edge_weight, sign) for sign, edge_weight in edges.values()],
            rho=rho,
            mean_received=mean,
        )
    return out


def ecl_primal_update_into(
    out: Tensor | None,
    param: Tensor,
    grad: Tensor,
    duals: TensorList,
    *,
    mu: float,
    weights: Sequence[tuple[float, float]],
    rho: float = 0.0,
    mean_received: Tensor | None = None,
) -> Tensor:
    """Eq. 5 for one tensor, or a flat slice of tensors that share eta, into `out`.

    `weights[j]` = (c_ij, A_ij) of `duals[j]` (eq. 6); `mean_received` is wbar_i (eq. 7),
    used when rho > 0. `out` may be `grad` or `param` (computed in place); None allocates.
    """
    negated = ecl_gradient_term_into(out, param, grad, mu=mu)
    return ecl_consensus_terms_(
        negated, duals, mu=mu, weights=weights, rho=rho, mean_received=mean_received
    )


def ecl_gradient_term_into(out: Tensor | None, param: Tensor, grad: Tensor, *, mu: float) -> Tensor:
    """g - mu w into `out` (may be `grad`): how eq. 5's negated numerator starts."""
    return torch.add(grad, param, alpha=-mu, out=out)  # one fused multiply-add


def ecl_consensus_terms_(
    negated: Tensor,
    duals: TensorList,
    *,
    mu: float,
    weights: Sequence[tuple[float, float]],
    rho: float = 0.0,
    mean_received: Tensor | None = None,
) -> Tensor:
    """Eq. 5 finished in place: `negated` holds g - mu w on entry, the new w on return.

    Subtracts sum_j c_ij A_ij z_ij (and rho wbar_i), then divides by -(mu + sum_j c_ij
    [+ rho]); `weights[j]` = (c_ij, A_ij) of `duals[j]`.
    """
    denominator = ecl_consensus_sum_(
        negated, duals, mu=mu, weights=weights, rho=rho, mean_received=mean_received
    )
    return negated.div_(-denominator)


def ecl_consensus_sum_(
    negated: Tensor,
    duals: TensorList,
    *,
    mu: float,
    weights: Sequence[tuple[float, float]],
    rho: float = 0.0,
    mean_received: Tensor | None = None,
) -> float:
    """Eq. 5's numerator, negated, in place; returns its denominator mu + sum_j c_ij [+ rho].

    The new w is `negated / -denominator`: the caller divides, into w directly if it can.
    """
    denominator = mu
    for dual, (c_ij, sign) in zip(duals, weights, strict=True):
        negated.add_(dual, alpha=-c_ij * sign)
        denominator += c_ij
    if rho > 0 and mean_received is not None:
        negated.add_(mean_received, alpha=-rho)
        denominator += rho
    return denominator


def mean_into(out: Tensor | None, tensors: TensorList) -> Tensor:
    """(t_1 + ... + t_n) / n, summed in order (eq. 7's mean); `out` may be `tensors[0]`."""
    if not tensors:
        raise ValueError("the mean of no tensors is undefined: pass at least one")
    if out is None:
        out = tensors[0].clone()
    elif out is not tensors[0]:
        out.copy_(tensors[0])
    for tensor in tensors[1:]:
        out.add_(tensor)
    return out.div_(len(tensors))


def ecl_outgoing_dual(
    params: Mapping[str, Tensor], dual: Mapping[str, Tensor], *, sign: float
) -> TensorDict:
    """y_ij = z_ij - 2 A_ij w_i (eq. 8): what node i sends to j after its primal step."""
    return {
        name: ecl_outgoing_dual_into(None, weight, dual[name], sign=sign)
        for name, weight in params.items()
    }


def ecl_outgoing_dual_into(
    out: Tensor | None, param: Tensor, dual: Tensor, *, sign: float
) -> Tensor:
    """y_ij = z_ij - 2 A_ij w_i (eq. 8) for one tensor or flat slice into `out` (None: new)."""
    return torch.add(dual, param, alpha=-2.0 * sign, out=out)


def pdmm_dual_update(received_dual: Mapping[str, Tensor]) -> TensorDict:
    """Peaceman-Rachford (eq. 9): z_ij <- y_ji."""
    return {name: t.clone() for name, t in received_dual.items()}


def pdmm_dual_update_(duals: TensorList, received_duals: TensorList) -> None:
    """Eq. 9 in place: every z_ij <- y_ji (copied, so the message may be freed)."""
    torch._foreach_copy_(list(duals), list(received_duals))


def admm_dual_update(
    dual: Mapping[str, Tensor], received_dual: Mapping[str, Tensor], *, theta: float
) -> TensorDict:
    """Averaged / Douglas-Rachford (eq. 10): z_ij <- (1 - theta) z_ij + theta y_ji."""
    return {name: torch.lerp(dual[name], received_dual[name], theta) for name in dual}


def admm_dual_update_(duals: TensorList, received_duals: TensorList, *, theta: float) -> None:
    """Eq. 10 in place: every z_ij <- (1 - theta) z_ij + theta y_ji (the same lerp)."""
    torch._foreach_lerp_(list(duals), list(received_duals), theta)


def sgd_update(
    params: Mapping[str, Tensor], grads: Mapping[str, Tensor], *, learning_rate: float
) -> TensorDict:
    """w <- w - learning_rate * g (eq. 11, the local step of gossip, FedAvg and local-only)."""
    return {name: torch.add(w, grads[name], alpha=-learning_rate) for name, w in params.items()}


def sgd_update_(params: TensorList, grads: TensorList, *, learning_rate: float) -> None:
    """Eq. 11's local step in place: every w <- w - learning_rate * g."""
    torch._foreach_add_(list(params), list(grads), alpha=-learning_rate)


def heavy_ball_(buffers: TensorList, grads: TensorList, *, momentum: float) -> None:
    """Eq. 24 in place: every m <- momentum * m + g (torch.optim.SGD's rule, dampening 0)."""
    buffers = list(buffers)
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, list(grads))


def track_(trackers: TensorList, directions: TensorList, previous: TensorList) -> None:
    """Eq. 25's tracking in place: t <- t + d - d_prev, then d_prev <- d.

    d is the gradient (or the momentum, eq. 27), so sum_i t_i follows sum_i d_i (eq. 26).
    """
    trackers, previous = list(trackers), list(previous)
    torch._foreach_add_(trackers, list(directions))
    torch._foreach_sub_(trackers, previous)
    torch._foreach_copy_(previous, list(directions))


def give_half_(trackers: TensorList, given: TensorList) -> None:
    """Eq. 26a in place: half of t leaves for the peer; its running total given grows by it."""
    trackers = list(trackers)
    torch._foreach_mul_(trackers, 0.5)
    torch._foreach_add_(list(given), trackers)


def take_given_(trackers: TensorList, received: TensorList, peer_given: TensorList) -> None:
    """Eq. 26b in place: t += (peer's running total given) - (what was already taken of it).

    Running totals make a lost, late, repeated or replayed-from-a-restart message move no
    tracker mass twice and lose none: the next message that arrives carries what is owed.
    """
    received, peer_given = list(received), list(peer_given)
    # the difference first: both totals may be large, what is owed is small
    torch._foreach_add_(list(trackers), torch._foreach_sub(peer_given, received))
    torch._foreach_copy_(received, peer_given)


def pairwise_average(params: Mapping[str, Tensor], received: Mapping[str, Tensor]) -> TensorDict:
    """Gossip exchange (eq. 11): w_i <- (w_i + w_j) / 2."""
    return {name: 0.5 * (w + received[name]) for name, w in params.items()}


def pairwise_average_(params: TensorList, received: TensorList) -> None:
    """Eq. 11's exchange in place: every w_i <- (w_i + w_j) / 2 (the same two roundings)."""
    params = list(params)
    torch._foreach_add_(params, list(received))
    torch._foreach_mul_(params, 0.5)


def weighted_average(
    models: Sequence[Mapping[str, Tensor]], weights: Sequence[float]
) -> TensorDict:
    """FedAvg aggregation (eq. 12): sum_k n_k w_k / sum_k n_k."""
    if not models or len(models) != len(weights):
        raise ValueError("weighted_average needs one weight per model and at least one model")
    total = float(sum(weights))
    if not total > 0:
        raise ValueError("weighted_average needs a positive total weight (sample count)")
    out: TensorDict = {}
    for name in models[0]:
        acc = torch.zeros_like(models[0][name])
        for model, weight in zip(models, weights, strict=True):
            acc = acc + (weight / total) * model[name]
        out[name] = acc
    return out
