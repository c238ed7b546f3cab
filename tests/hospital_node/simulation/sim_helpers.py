"""Arguments of the small `ecl-sim` configuration the simulation tests share."""

from __future__ import annotations

from pathlib import Path


def sim_args(data: Path, out: Path, *extra: str) -> list[str]:
    """ecl-sim arguments for the small test configuration."""
    return [
        "--data", str(data), "--out", str(out), "--quiet",
        "--set", "data.image_size=32",
        "--set", "training.batch_size=16",
        "--set", "evaluation.bootstrap=20",
        "--set", "evaluation.images=160",
        *extra,
    ]  # fmt: skip
