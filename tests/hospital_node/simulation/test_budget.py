"""The simulation's budget: steps from the data (training.epochs) and the cosine's length."""

from __future__ import annotations

import dataclasses

import pytest

from hospital_node.simulation.budget import method_plan, with_data_budget
from hospital_node.simulation.config import SimulationConfig
from hospital_node.training.config import TrainingConfig


def test_steps_for_counts_epochs_over_the_images_and_keeps_explicit_steps() -> None:
    assert TrainingConfig(steps=0, epochs=19.0, batch_size=16).steps_for(75) == 90  # 89.06 up
    assert TrainingConfig(steps=0, epochs=0.01, batch_size=16).steps_for(10) == 1  # at least 1
    assert TrainingConfig(steps=7, epochs=19.0).steps_for(75) == 7
    assert TrainingConfig(steps=0).steps_for(75) == 0  # a node: until stopped
    assert TrainingConfig(steps=0, epochs=1.0, min_steps=40, batch_size=16).steps_for(75) == 40


def test_ecl_sim_defaults_derive_steps_from_the_mean_hospital() -> None:
    # Prepare: the defaults a researcher gets (steps = 0, epochs = 18, at least 250, batch 16)
    config = SimulationConfig()
    assert config.training.steps == 0 and config.training.epochs == 18.0

    # Execute: a small set (mean 75 images) and a large one (mean 1000)
    small = with_data_budget(config, [70, 80, 90, 60])
    large = with_data_budget(config, [1000, 1000])

    # Assert: 18 x 75 / 16 = 84.4 -> the floor of 250; 18 x 1000 / 16 = 1125
    assert small.training.steps == 250 and large.training.steps == 1125
    plan, steps = method_plan(large, "centralized", hospitals=2)
    assert steps == 1125 and plan.training.batch_size == 2 * 16  # scaled: the same passes
    assert plan.consensus.schedule_steps == 0  # constant rate: no decay to size
    cosine = dataclasses.replace(
        large,
        consensus=dataclasses.replace(
            large.consensus, lr_schedule="cosine", warmup_steps=5, min_learning_rate=1e-3
        ),
    )
    plan, _ = method_plan(cosine, "centralized", hospitals=2)
    assert plan.consensus.schedule_steps == 1125 - 5  # a cosine decays over the run's budget


def test_an_explicit_step_budget_is_kept() -> None:
    config = SimulationConfig(training=TrainingConfig(steps=30))
    assert with_data_budget(config, [1000]) is config


def test_a_config_without_steps_or_epochs_is_refused() -> None:
    with pytest.raises(ValueError, match=r"training\.steps .* or training\.epochs"):
        SimulationConfig(training=TrainingConfig(steps=0))
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        dataclasses.replace(TrainingConfig(), epochs=-1.0)
