"""EvaluationConfig and SharingConfig: how often a model is reviewed, and what a node shares."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """Periodic evaluation, the same settings for a node and the simulation.

    `every`: local steps between evaluations (0 = never; the simulation always evaluates at
    the end). `images`: the simulation's intermediate evaluations use a fixed random subset of
    this many common-test images (its final evaluation uses all). `bootstrap`: resamples over
    patients for the 95 % confidence intervals. `ci_every` (nodes): every n-th periodic
    evaluation, starting with the first of each start, is a full review: bootstrap CIs, ROC
    curves, calibration and subgroups; the others compute the AUCs only, so training is not
    slowed (0 = never a full review). `calibration_bins`: equal-width reliability-diagram bins.
    `select_best` (simulation): report each hospital's model as it was at its best mean AUC on
    the pooled validation splits (checked at every evaluation), instead of its last state.
    """

    every: int = 50
    images: int = 400
    bootstrap: int = 200
    ci_every: int = 5
    calibration_bins: int = 10
    select_best: bool = False

    def __post_init__(self) -> None:
        if self.every < 0 or self.images < 1 or self.bootstrap < 0 or self.ci_every < 0:
            raise ValueError("evaluation.every, bootstrap, ci_every must be >= 0, images >= 1")
        if not 2 <= self.calibration_bins <= 50:
            raise ValueError("evaluation.calibration_bins must be between 2 and 50")


@dataclass(frozen=True, kw_only=True)
class SharingConfig:
    """[metrics] in node.toml: publishing per-finding AUC summaries to the network (opt-in).

    `share`: off by default. When on, the node sends its latest full review (AUC, CI, counts,
    model step, boot epoch; never images, labels or per-case scores) to its neighbours that
    share too, and relays what they send, so every sharing hospital sees every sharing site.
    `min_positives`: findings with fewer positive (or negative) test images are sent as
    'suppressed'. `interval_s`: mean time between two metric exchanges on an edge.
    """

    share: bool = False
    min_positives: int = 10
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.min_positives < 1:
            raise ValueError("[metrics] min_positives must be at least 1")
        if not self.interval_s > 0:
            raise ValueError("[metrics] interval_s must be > 0")
