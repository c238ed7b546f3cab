"""MethodRun's batching (grouped steps, swaps that wait for them) against strict event order."""

from __future__ import annotations

import dataclasses

import torch

from consensus.exchange_schedule import Step, Swap
from consensus.topology import node_names, ring
from hospital_node.simulation.config import NetworkConfig, SimulationConfig
from hospital_node.simulation.engine import MethodRun, NodeTrainData
from hospital_node.training.config import TrainingConfig
from hospital_node.training.model import ModelConfig, build_model

NODES = node_names(5)
CONFIG = SimulationConfig(
    model=ModelConfig(architecture="compact"),
    training=TrainingConfig(batch_size=4, seed=3),
    network=NetworkConfig(exchange_interval=1.0),
    batched=False,
)


def _train() -> list[NodeTrainData]:
    generator = torch.Generator().manual_seed(0)
    return [
        NodeTrainData(
            n,
            torch.rand(12, 1, 16, 16, generator=generator),
            (torch.rand(12, 14, generator=generator) < 0.3).float(),
        )
        for n in NODES
    ]


def _run(config: SimulationConfig) -> MethodRun:
    torch.manual_seed(0)
    return MethodRun(
        method="ecl-pdmm", graph=ring(NODES), train=_train(), config=config,
        init_module=build_model(config.model), steps=6,
    )  # fmt: skip


def _strictly_in_order(run: MethodRun) -> None:
    """The schedule's meaning: each event applied alone, in order."""
    index = {n: i for i, n in enumerate(NODES)}
    for event in run._schedule:
        if isinstance(event, Step):
            i = index[event.node]
            [(grads, _)] = run.stack.gradients([i], [run.trainers[i]])
            run.algorithms[i].local_step(grads)
            run.steps_done[i] += 1
        elif isinstance(event, Swap):
            run.transport.swap(event.a, event.b, lost_ab=event.lost_ab, lost_ba=event.lost_ba)


def test_grouped_steps_and_waiting_swaps_give_the_strict_order_bits() -> None:
    # Prepare: a swap on each edge every step, so swaps often wait for pending steps
    reference, grouped = _run(CONFIG), _run(CONFIG)
    assert any(isinstance(e, Swap) for e in reference._schedule)

    # Execute: strict order vs advance() in three slices (checkpoint boundaries flush)
    _strictly_in_order(reference)
    for total in (7, 19, 6 * len(NODES)):
        grouped.advance(total)

    # Assert: the same parameters, duals and message counts, bit for bit
    assert grouped.steps_done == reference.steps_done == [6] * len(NODES)
    for name, stacked in reference.stack.params.items():
        assert torch.equal(grouped.stack.params[name], stacked), name
    for mine, theirs in zip(grouped.algorithms, reference.algorithms, strict=True):
        mine_state, their_state = mine.state_dict()["tensors"], theirs.state_dict()["tensors"]
        assert all(torch.equal(t, their_state[k]) for k, t in mine_state.items())
    assert grouped.transport.stats() == reference.transport.stats()


def test_vmapped_groups_match_strict_order_to_rounding() -> None:
    # One vmapped computation per group: the same math, summed in another order.
    reference = _run(CONFIG)
    batched = _run(dataclasses.replace(CONFIG, batched=True))

    _strictly_in_order(reference)
    batched.advance(6 * len(NODES))

    for name, stacked in reference.stack.params.items():
        torch.testing.assert_close(batched.stack.params[name], stacked, rtol=1e-4, atol=1e-5)
