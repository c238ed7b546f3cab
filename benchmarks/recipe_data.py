"""One `ecl-data nih` split as the product loads it: pooled train / val, common_test, scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_tools.labels import FINDINGS
from hospital_node.data.config import DataConfig
from hospital_node.evaluation.metrics import macro_mean, per_finding_auc
from hospital_node.simulation.config import SimulationConfig
from hospital_node.simulation.data import EvalSet, load_sim_data, pooled

# A finding needs this many positives in a test set to count in the "powered" mean: with fewer,
# one image moves its AUC by more than 0.1 (the plain mean over all findings is reported too).
POWERED_MIN_POSITIVES = 10


@dataclass(frozen=True)
class PooledSplit:
    """What the centralized reference of `ecl-sim` sees of one partition (patient-disjoint):
    `train` / `val` pool every hospital's train / val split, `test` is common_test."""

    name: str
    train: EvalSet
    val: EvalSet
    test: EvalSet


def load_pooled_split(data_dir: Path, *, image_size: int, cache_dir: Path | None) -> PooledSplit:
    """The site tree decoded by the simulation's own loader (same cache, same pixels)."""
    config = SimulationConfig(data=DataConfig(image_size=image_size, cache_dir=cache_dir))
    data = load_sim_data(data_dir, config, progress=False)
    split = PooledSplit(
        name=data_dir.name,
        train=pooled([data.train[s] for s in data.sites]),
        val=data.validation,
        test=pooled([data.common]),
    )
    _check_disjoint(split)
    return split


def _check_disjoint(split: PooledSplit) -> None:
    """The partition promises patient-disjoint parts; a leak would void every number."""
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        for pid in set(getattr(split, name).patient_ids):
            if pid in seen:
                raise ValueError(f"{split.name}: patient {pid} is in {seen[pid]} and {name}")
            seen[pid] = name


@dataclass(frozen=True)
class Scores:
    """Per-finding AUC (None: no positive) and the two macro means of one model on one set."""

    per_finding: tuple[float | None, ...]
    n_pos: tuple[int, ...]
    mean_auc: float | None  # over findings with a positive (the product's definition)
    powered_mean_auc: float | None  # over findings with >= POWERED_MIN_POSITIVES positives

    def to_dict(self) -> dict:
        return {
            "mean_auc": self.mean_auc,
            "powered_mean_auc": self.powered_mean_auc,
            "per_finding": dict(zip(FINDINGS, self.per_finding, strict=True)),
            "n_pos": dict(zip(FINDINGS, self.n_pos, strict=True)),
        }


def score(labels: torch.Tensor | np.ndarray, probs: torch.Tensor | np.ndarray) -> Scores:
    """AUCs of `probs` [N, 14] against `labels` with the product's evaluation functions."""
    y = np.asarray(labels)
    aucs = per_finding_auc(y, np.asarray(probs, dtype=np.float64))
    n_pos = tuple(int(v) for v in y.sum(0))
    powered = [a if n >= POWERED_MIN_POSITIVES else None for a, n in zip(aucs, n_pos, strict=True)]
    return Scores(tuple(aucs), n_pos, macro_mean(aucs), macro_mean(powered))


def powered_mean(per_finding: dict[str, float | None], n_pos: list[int]) -> float | None:
    """Mean AUC over the findings with >= POWERED_MIN_POSITIVES test positives."""
    kept = [
        per_finding.get(f) if n >= POWERED_MIN_POSITIVES else None
        for f, n in zip(FINDINGS, n_pos, strict=True)
    ]
    return macro_mean(kept)
