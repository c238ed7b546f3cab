"""Configuration loading: TOML + overrides into frozen dataclasses, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hospital_node.configio import ConfigError, load_config, parse_overrides, to_dict
from hospital_node.simulation.config import SimulationConfig


def test_overrides_keep_the_enclosing_defaults_of_a_nested_table(tmp_path: Path) -> None:
    toml = tmp_path / "sim.toml"
    toml.write_text('methods = ["local", "ecl-admm"]\n[network]\ntopology = "full"\n')
    overrides = parse_overrides(["consensus.consensus_weight=1", "batched=false"])
    config = load_config(SimulationConfig, toml, overrides)
    assert config.methods == ("local", "ecl-admm")
    assert config.network.topology == "full"
    assert config.network.exchange_interval == SimulationConfig().network.exchange_interval
    assert config.consensus.consensus_weight == 1.0
    # the simulation's own default, not ConsensusConfig's
    assert config.consensus.learning_rate == SimulationConfig().consensus.learning_rate
    assert config.batched is False


def test_round_trip_through_a_dict() -> None:
    config = load_config(SimulationConfig, None, parse_overrides(["network.speeds=1,2,1,2"]))
    assert config.network.speeds == (1.0, 2.0, 1.0, 2.0)
    assert load_config(SimulationConfig, None, to_dict(config)) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.stepz=3", "unknown field"),
        ("training.steps=many", "expected int"),
        ("batched=maybe", "expected true/false"),
        ("methods=local,teleport", "unknown method"),
        ("no-equals-sign", "section.field=value"),
    ],
)
def test_bad_values_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SimulationConfig, None, parse_overrides([override]))


def test_missing_or_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SimulationConfig, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(SimulationConfig, bad)
