"""The node's periodic evaluation on its own test split: AUCs every time, a full review
(patient-bootstrap CIs, ROC curves, calibration, subgroups) at every n-th evaluation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hospital_node.data.attributes import ImageAttributes, read_attributes
from hospital_node.data.site import SiteData
from hospital_node.evaluation.config import EvaluationConfig
from hospital_node.evaluation.metrics import evaluate_scores
from hospital_node.evaluation.records import Evaluation, EvaluationError
from hospital_node.evaluation.review import Review, review_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeEvaluation:
    """One periodic evaluation: the AUCs, and the full review when this one is a review."""

    step: int
    evaluation: Evaluation
    review: Review | None
    seconds: float  # wall time of the evaluation (forward pass included)


class NodeReviewer:
    """Decides which evaluation is a full review and computes it; one per node start.

    The first evaluation of every start is a full review, then every `ci_every`-th: the
    bootstrap (`bootstrap` resamples over patients, for every finding and subgroup) is the
    costly part, so the others compute the AUCs only (docs/results.md gives the measured cost).
    Resampling draws come from a generator seeded by (seed, step): a review is reproducible.
    """

    def __init__(
        self,
        *,
        name: str,
        test: SiteData,
        attributes: ImageAttributes,
        config: EvaluationConfig,
        seed: int,
    ) -> None:
        self.name = name
        self.test = test
        self.groups = attributes.groups()
        self.config = config
        self.seed = seed
        self.count = 0  # evaluations in this start

    @classmethod
    def for_site(
        cls, *, name: str, site_dir: Path, test: SiteData, config: EvaluationConfig, seed: int
    ) -> NodeReviewer:
        """Reads the test images' subgroup attributes (labels.csv or DICOM headers) once."""
        started = time.perf_counter()
        attributes = read_attributes(site_dir, test.sop_instance_uids)
        log.info("%s: subgroup attributes of %d test images read in %.2f s",
                 name, len(test), time.perf_counter() - started)  # fmt: skip
        return cls(name=name, test=test, attributes=attributes, config=config, seed=seed)

    def next_is_review(self) -> bool:
        every = self.config.ci_every
        return bool(every) and self.count % every == 0

    def evaluate(
        self, step: int, predict: Callable[[torch.Tensor], torch.Tensor]
    ) -> NodeEvaluation | None:
        """The evaluation at `step` of `predict` (test images -> probabilities [N, findings]);
        None when the test split is empty or cannot be evaluated (logged)."""
        if len(self.test) == 0:
            return None
        started = time.perf_counter()
        scores = predict(self.test.images).numpy()
        review_now = self.next_is_review()
        self.count += 1
        labels, patients = self.test.labels.numpy(), self.test.patient_ids
        try:
            if review_now:
                rng = np.random.default_rng((self.seed, step))
                review = review_scores(
                    labels, scores, patients, groups=self.groups, rng=rng,
                    n_boot=self.config.bootstrap, n_bins=self.config.calibration_bins,
                )  # fmt: skip
                evaluation = review.evaluation
            else:
                review = None
                evaluation = evaluate_scores(labels, scores, patients, with_ci=False)
        except EvaluationError as exc:
            log.warning("%s: local evaluation skipped: %s", self.name, exc)
            return None
        return NodeEvaluation(step, evaluation, review, time.perf_counter() - started)
