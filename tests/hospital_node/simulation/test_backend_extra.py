"""Ray stays an optional extra: a plain install does not pull it, and its absence is explained."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from hospital_node.simulation.config import SimulationConfig
from hospital_node.simulation.ray_engine import RayUnavailable, import_ray

ROOT = Path(__file__).resolve().parents[3]


def test_ray_is_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    assert not any(dep.lower().startswith("ray") for dep in project["dependencies"])
    assert any(dep.startswith("ray") for dep in project["optional-dependencies"]["ray"])


def test_backend_ray_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed

    with pytest.raises(RayUnavailable, match=r"pip install 'ecl-hospitals\[ray\]'"):
        import_ray()


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend must be one of inprocess, ray"):
        SimulationConfig(backend="dask")
