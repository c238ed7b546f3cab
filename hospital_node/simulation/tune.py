"""`ecl-sim --tune`: every method's learning rate chosen on the pooled validation splits.

The same protocol for every method, the centralized reference included: each learning rate
of `tune.learning_rates` trains the method for `tune.budget_fraction` x training.steps on the
hospitals' training splits; its score is the mean, over the method's models, of the mean AUC
on the pooled validation splits (at the best evaluation with `evaluation.select_best`). The
best rate becomes a `per_method` entry of the reported run, which reads the test sets only.
Trials are resumable: each finished one is kept in OUT/tuning.json, each trial's curves in
OUT/tuning.sqlite (open it with ecl-app).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from hospital_node.configio import to_dict
from hospital_node.simulation.budget import with_method_settings
from hospital_node.simulation.config import SimulationConfig
from hospital_node.simulation.data import SimData
from hospital_node.simulation.runner import ProgressFactory, Simulation
from hospital_node.store.writer import ResultsStore, StoreError

log = logging.getLogger(__name__)
TRIALS_FILE = "tuning.json"
TRIALS_STORE = "tuning.sqlite"


def trial_config(config: SimulationConfig, method: str, learning_rate: float) -> SimulationConfig:
    """The method's own settings with `learning_rate`, on the tuning budget.

    A schedule's floor (`min_learning_rate`) keeps its ratio to the peak, so every rate of the
    grid decays alike.
    """
    config = with_method_settings(config, method)
    consensus = config.consensus
    ratio = consensus.min_learning_rate / consensus.learning_rate
    consensus = dataclasses.replace(
        consensus, learning_rate=learning_rate, min_learning_rate=ratio * learning_rate
    )
    steps = max(1, round(config.training.steps * config.tune.budget_fraction))
    training = dataclasses.replace(config.training, steps=steps)
    return dataclasses.replace(
        config, methods=(method,), consensus=consensus, training=training, per_method=()
    )


def trial_key(method: str, learning_rate: float) -> str:
    return f"{method}@lr={learning_rate:g}"


def _read_trials(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def _write_trials(path: Path, trials: dict[str, Any]) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(trials, indent=1, sort_keys=True))
    os.replace(temporary, path)


def _run_trial(
    config: SimulationConfig, data: SimData, store: ResultsStore, out: Path, run_id: str,
    progress: ProgressFactory | None,
) -> float | None:  # fmt: skip
    """Train one (method, rate); its score (None if no validation AUC exists)."""
    sim = Simulation(
        config, data=data, store=store, run_id=run_id,
        checkpoint_dir=out / "checkpoints" / run_id, progress=progress,
    )  # fmt: skip
    try:
        store.run_info(run_id)
    except StoreError:
        store.start_run(run_id, kind="simulation", config=to_dict(config), topology=sim.topology())
        sim.record_setup()
    scores = [s for s in sim.run_method(config.methods[0]) if s is not None]
    store.set_run_status(run_id, "finished")
    return sum(scores) / len(scores) if scores else None


def tune_methods(
    config: SimulationConfig, data: SimData, *, out: Path, progress: ProgressFactory | None
) -> SimulationConfig:
    """`config` with each method's best learning rate as a `per_method` entry."""
    out.mkdir(parents=True, exist_ok=True)
    trials_path = out / TRIALS_FILE
    trials = _read_trials(trials_path)
    chosen = []
    with ResultsStore.open(out / TRIALS_STORE) as store:
        for method in config.methods:
            scores = {}
            for rate in config.tune.learning_rates:
                key = trial_key(method, rate)
                if key not in trials:
                    trial = trial_config(config, method, rate)
                    run_id = "tune-" + key.replace("@lr=", "-lr")
                    score = _run_trial(trial, data, store, out, run_id, progress)
                    trials[key] = {"method": method, "learning_rate": rate, "val_auc": score}
                    _write_trials(trials_path, trials)
                scores[rate] = trials[key]["val_auc"]
            best = max(scores, key=lambda r: -math.inf if scores[r] is None else scores[r])
            log.warning("tuned %s: learning_rate %g (validation AUC %s)", method, best, scores)
            chosen.append(f"{method}:consensus.learning_rate={best:g}")
            floor = with_method_settings(config, method).consensus
            if floor.min_learning_rate > 0:  # the reported run keeps the floor's ratio too
                ratio = floor.min_learning_rate / floor.learning_rate
                chosen.append(f"{method}:consensus.min_learning_rate={ratio * best:g}")
    return dataclasses.replace(config, per_method=(*config.per_method, *chosen))
