"""One training path: a real node and its simulated twin reach the same model and epsilon."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from node_helpers import SITES

from consensus.topology import ring
from hospital_node.data.site import load_site
from hospital_node.node.config import NodeConfig, load_node_config
from hospital_node.node.runtime import HospitalNode
from hospital_node.simulation.config import NetworkConfig, SimulationConfig
from hospital_node.simulation.engine import MethodRun, NodeTrainData
from hospital_node.training.model import initial_model

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]
STEPS = 12
# The neighbours never start: no swap happens, so the node's model is its own steps alone.
SETTINGS = {
    "exchange": {"join": "scratch", "mean_interval_s": 60.0},
    "training": {"checkpoint_every": 100, "augment": {"enabled": True}},
    "evaluation": {"every": 0},
}


def node_model(config: NodeConfig, steps: int) -> tuple[dict[str, torch.Tensor], HospitalNode]:
    node = HospitalNode(config=config)
    try:
        node.initialize()
        node.run(max_steps=steps)
        return node.get_weights(), node
    finally:
        node.shutdown(status="finished")


def simulated_twin(config: NodeConfig, node_data: Path, steps: int) -> MethodRun:
    """The same three hospitals in ecl-sim's engine, configured from the node's own config."""
    train = []
    for site in SITES:
        split = load_site(node_data / site, config.data).subset("train")
        train.append(NodeTrainData(site, split.images, split.labels))
    sim = SimulationConfig(
        methods=(config.consensus.method,),
        model=config.model,
        data=config.data,
        training=dataclasses.replace(config.training, steps=steps),
        consensus=config.consensus,
        privacy=config.privacy,
        network=NetworkConfig(exchange_interval=1e9),  # no swap within the budget
    )
    run = MethodRun(
        method=config.consensus.method,
        graph=ring(SITES),
        train=train,
        config=sim,
        init_module=initial_model(config.model, seed=config.training.seed),
        steps=steps,
    )
    run.advance(steps * len(SITES))
    return run


@pytest.mark.parametrize("method", ["ecl-pdmm", "gossip"])
def test_a_node_reaches_the_parameters_of_its_simulated_twin(
    tmp_path, build_network, node_data, method
) -> None:
    path = build_network(tmp_path, SETTINGS)["N1"]
    config = load_node_config(path, {"algorithm": {"method": method}})

    weights, _ = node_model(config, STEPS)
    run = simulated_twin(config, node_data, STEPS)

    twin = run.node_state(0)  # N1
    moved = max(float((twin[k] - v).abs().max()) for k, v in initial_model(
        config.model, seed=config.training.seed).state_dict().items())  # fmt: skip
    assert moved > 1e-3  # both trained: the comparison is not of two initial models
    for name, value in twin.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5)


def test_dpsgd_epsilon_is_identical_in_a_node_and_the_simulation(
    tmp_path, build_network, node_data
) -> None:
    privacy = {"mode": "dpsgd", "target_epsilon": 3.0, "clip_norm": 1.0, "planned_epochs": 4}
    config = load_node_config(build_network(tmp_path, SETTINGS)["N1"], {"privacy": privacy})

    _, node = node_model(config, 5)
    run = simulated_twin(config, node_data, 5)

    ours, twin = node.privacy.status_row(), run.privacy.status(0)
    assert ours.releases == twin.releases == 5
    assert ours.noise_multiplier == twin.noise_multiplier
    assert ours.epsilon == pytest.approx(twin.epsilon, rel=1e-12) and ours.epsilon > 0
