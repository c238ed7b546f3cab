"""Validation of a simulated method: pooled-validation AUC per model, and its best checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hospital_node.evaluation.metrics import evaluate_scores
from hospital_node.evaluation.records import EvaluationError
from hospital_node.simulation.data import EvalSet


def validation_aucs(probs: Tensor, validation: EvalSet) -> list[float | None]:
    """Mean AUC of each model's probabilities [K, N, C] on the pooled validation splits."""
    if len(validation) == 0:
        return [None] * probs.shape[0]
    y_true = validation.labels.numpy()
    aucs = []
    for model_probs in probs.numpy():
        try:
            evaluation = evaluate_scores(
                y_true, model_probs, list(validation.patient_ids), with_ci=False
            )
        except EvaluationError:
            aucs.append(None)
            continue
        aucs.append(evaluation.mean_auc)
    return aucs


class BestModels:
    """Each hospital model's best pooled-validation AUC so far, with its parameters and step.

    Best-checkpoint selection, the same rule for every method: the test set then reads each
    hospital's model as it was at its best validation score (docs/researcher.md).
    """

    def __init__(self, models: int) -> None:
        self.scores = [-math.inf] * models
        self.steps = [0] * models
        self.states: list[dict[str, Tensor] | None] = [None] * models

    def offer(
        self,
        scores: Sequence[float | None],
        step: int,
        snapshot: Callable[[int], dict[str, Tensor]],
    ) -> None:
        """Keep model i's parameters (`snapshot(i)`) where its score beats its best so far."""
        for i, score in enumerate(scores):
            if score is not None and score > self.scores[i]:
                self.scores[i], self.steps[i], self.states[i] = score, step, snapshot(i)

    def state_dict(self) -> dict:
        tensors = {
            f"{i}/{name}": t
            for i, state in enumerate(self.states)
            if state is not None
            for name, t in state.items()
        }
        meta = {"scores": [None if math.isinf(s) else s for s in self.scores], "steps": self.steps}
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: dict) -> None:
        meta = state["meta"]
        self.scores = [-math.inf if s is None else float(s) for s in meta["scores"]]
        self.steps = [int(s) for s in meta["steps"]]
        states: list[dict[str, Tensor] | None] = [None] * len(self.scores)
        for key, tensor in state["tensors"].items():
            index, _, name = key.partition("/")
            states[int(index)] = {**(states[int(index)] or {}), name: torch.as_tensor(tensor)}
        self.states = states
