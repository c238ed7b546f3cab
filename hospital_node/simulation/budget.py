"""What one method of a simulation runs with: its own settings, schedule length and budget."""

from __future__ import annotations

import dataclasses

from hospital_node.configio import deep_merge, from_mapping, parse_overrides, to_dict
from hospital_node.simulation.config import SimulationConfig


def with_data_budget(config: SimulationConfig, train_sizes: list[int]) -> SimulationConfig:
    """`training.steps` from the data when only `training.epochs` is set: `epochs` passes over
    the mean hospital's training split; the `scaled` centralized reference then makes the same
    number of passes over the union. An explicit `training.steps` is kept."""
    if config.training.steps > 0:
        return config
    mean = sum(train_sizes) / max(1, len(train_sizes))
    training = dataclasses.replace(config.training, steps=config.training.steps_for(mean))
    return dataclasses.replace(config, training=training)


def with_method_settings(config: SimulationConfig, method: str) -> SimulationConfig:
    """`config` with the `per_method` entries of `method` applied (e.g. its tuned lr)."""
    pairs = [e.partition(":")[2] for e in config.per_method if e.partition(":")[0] == method]
    if not pairs:
        return config
    merged = deep_merge(to_dict(config), parse_overrides(pairs))
    return from_mapping(SimulationConfig, merged, where=f"per_method[{method}]")


def centralized_budget(config: SimulationConfig, hospitals: int) -> tuple[SimulationConfig, int]:
    """The reference gets the hospitals' gradient evaluations: V x batch or V x steps.

    `scaled` (default): as many updates as each hospital, each on a V-times larger batch
    from the union, i.e. what the hospitals together compute per round of local steps.
    `same`: V times as many updates at the hospitals' batch size (a stronger reference).
    """
    training = config.training
    if config.centralized_batch == "scaled":
        batch = dataclasses.replace(training, batch_size=training.batch_size * hospitals)
        return dataclasses.replace(config, training=batch), training.steps
    return config, training.steps * hospitals


def with_schedule_length(config: SimulationConfig, steps: int) -> SimulationConfig:
    """A cosine decay without its own length decays over the run's `steps` (after warm-up)."""
    return dataclasses.replace(config, consensus=config.consensus.decaying_over(steps))


def method_plan(
    config: SimulationConfig, method: str, *, hospitals: int
) -> tuple[SimulationConfig, int]:
    """(config, local steps) of one method's run: its settings, budget and schedule length."""
    config = with_method_settings(config, method)
    steps = config.training.steps
    if method == "centralized":
        config, steps = centralized_budget(config, hospitals)
    return with_schedule_length(config, steps), steps
