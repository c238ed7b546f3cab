"""ConsensusConfig: the method and its hyper-parameters, spelled out (docs/algorithm.md sec. 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

METHODS: tuple[str, ...] = (
    "ecl-pdmm",
    "ecl-admm",
    "ecl-isvr-pdmm",
    "ecl-isvr-admm",
    "gossip",
    "gradient-tracking",
    "fedavg",
    "local",
)
# Methods that exchange duals (y/ tensors), need edge signs and weights, and divide by the lr.
ECL_METHODS: tuple[str, ...] = ("ecl-pdmm", "ecl-admm", "ecl-isvr-pdmm", "ecl-isvr-admm")
# ECL with its consensus weight set by the local steps between exchanges (sec. 10).
ISVR_METHODS: tuple[str, ...] = ("ecl-isvr-pdmm", "ecl-isvr-admm")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "cyclical")


class ConsensusConfigError(ValueError):
    """A consensus hyper-parameter is out of range; the message names the field and the fix."""


@dataclass(frozen=True, kw_only=True)
class ConsensusConfig:
    """How one node learns and agrees with its peers.

    Every weight is relative to the inverse step size mu = 1 / learning_rate (eq. 5), so an
    lr schedule moves the gradient step and keeps the local-vs-consensus balance fixed:
    eta = consensus_weight * mu and rho = proximity_weight * mu.

    `learning_rate` is the peak rate of every schedule: the constant rate, the start of the
    cosine decay, the top of the cyclical triangle (`min_learning_rate` is its bottom).
    """

    method: str = "ecl-pdmm"
    learning_rate: float = 0.01
    # eta / mu (eq. 6); 0.5 was fastest in the scans of docs/algorithm.md sec. 7. Not used by
    # ecl-isvr-*, whose weight follows from isvr_local_steps.
    consensus_weight: float = 0.5
    # Scale eta per tensor by sqrt(fan-in) (eq. 6); off by default, see docs/algorithm.md.
    fan_in_scaling: bool = False
    # rho / mu; > 0 also sends the model itself, doubling the traffic (eq. 7).
    proximity_weight: float = 0.0
    # ECL: True makes `learning_rate` the step on the gradient, 1 / (mu + eta), as it is for
    # gossip, FedAvg and local SGD (mu = 1 / (lr (1 + consensus_weight))); False keeps the
    # paper's mu = 1 / lr, whose gradient step is lr / (1 + consensus_weight). The simulation
    # compares methods with True (docs/algorithm.md sec. 9). ECL-ISVR likewise, with its own
    # weight 1 / (K - 1) in place of consensus_weight (sec. 10).
    matched_step: bool = False
    # theta of ECL-ADMM's averaged dual update (eq. 10); ignored by the other methods.
    admm_relaxation: float = 0.5
    # Initial duals: "model" (z_ij = A_ij w_i(0), no pull at the start) or "zero" (eq. 4 as
    # published); see docs/algorithm.md sec. 6.5.
    dual_init: str = "model"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    # Length of the cosine decay in local steps (after warm-up); 0 = the run's budget (the
    # simulation's steps per method; a node's training.steps).
    schedule_steps: int = 0
    min_learning_rate: float = 0.0
    # Length of one triangle of the cyclical schedule in local steps; required for "cyclical".
    cycle_steps: int = 0
    # FedAvg / co-learning: local epochs between two server rounds (the simulation turns
    # this into a round interval in steps with `round_interval_steps`).
    local_epochs: int = 1
    # ECL-ISVR: K, the local steps between two exchanges on an edge (the simulation sets it
    # from its exchange interval); the consensus weight becomes 1 / (max(K, 2) - 1) in place
    # of `consensus_weight` (docs/algorithm.md eq. 22). 8 as in the published experiment.
    isvr_local_steps: float = 8.0
    # Heavy-ball momentum b of the gradient (eq. 24) for every method; 0 = plain SGD steps.
    # Gradient tracking tracks the momentum instead of the gradient (eq. 27).
    momentum: float = 0.0

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_ranges()
        self._check_schedule()

    def _check_choices(self) -> None:
        if self.method not in METHODS:
            raise ConsensusConfigError(f"method={self.method!r}: choose one of {METHODS}")
        if self.dual_init not in ("model", "zero"):
            raise ConsensusConfigError(f"dual_init={self.dual_init!r}: choose 'model' or 'zero'")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConsensusConfigError(
                f"lr_schedule={self.lr_schedule!r}: choose one of {LR_SCHEDULES}"
            )

    def _check_ranges(self) -> None:
        if not self.learning_rate > 0:
            raise ConsensusConfigError("learning_rate must be > 0 (mu = 1 / learning_rate)")
        for name in ("consensus_weight", "proximity_weight", "weight_decay", "min_learning_rate"):
            if getattr(self, name) < 0:
                raise ConsensusConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.is_ecl and not self.is_isvr and not self.consensus_weight > 0:
            raise ConsensusConfigError("ECL needs consensus_weight > 0, or models never agree")
        if not 0 <= self.momentum < 1:
            raise ConsensusConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.isvr_local_steps) and self.isvr_local_steps >= 1):
            raise ConsensusConfigError(
                f"isvr_local_steps must be a finite number >= 1, got {self.isvr_local_steps}: "
                "the local steps between two exchanges on an edge (the exchange interval)"
            )
        if self.is_isvr:
            self._check_isvr()
        if not 0 < self.admm_relaxation <= 1:
            raise ConsensusConfigError("admm_relaxation (theta) must be in (0, 1]; 0.5 is usual")
        if self.local_epochs < 1:
            raise ConsensusConfigError("local_epochs must be >= 1")
        if self.warmup_steps < 0:
            raise ConsensusConfigError("warmup_steps must be >= 0")

    def _check_isvr(self) -> None:
        """ISVR fixes the consensus weight from K and has no proximity term (sec. 10.1)."""
        if self.proximity_weight != 0:
            raise ConsensusConfigError(
                f"{self.method} has no proximity term (rho = 0): set proximity_weight = 0"
            )
        if self.fan_in_scaling:
            raise ConsensusConfigError(
                f"{self.method} sets its consensus weight from isvr_local_steps; a per-tensor "
                "sqrt(fan-in) factor would undo that choice: set fan_in_scaling = false"
            )

    def _check_schedule(self) -> None:
        if self.schedule_steps < 0:
            raise ConsensusConfigError("schedule_steps must be >= 0 (0: the run's budget)")
        if self.lr_schedule == "cyclical" and self.cycle_steps < 2:
            raise ConsensusConfigError("lr_schedule='cyclical' needs cycle_steps >= 2")
        if self.lr_schedule != "constant" and self.min_learning_rate > self.learning_rate:
            raise ConsensusConfigError("min_learning_rate must not exceed learning_rate")
        if self.is_ecl and self.lr_schedule != "constant" and not self.min_learning_rate > 0:
            raise ConsensusConfigError(
                "ECL divides by the learning rate (mu = 1 / lr): set min_learning_rate > 0"
            )

    @property
    def is_ecl(self) -> bool:
        return self.method in ECL_METHODS

    @property
    def is_isvr(self) -> bool:
        return self.method in ISVR_METHODS

    def decaying_over(self, steps: int) -> ConsensusConfig:
        """This config with a cosine decay that has no length of its own spread over a budget
        of `steps` local steps (after the warm-up); unchanged otherwise."""
        if self.lr_schedule != "cosine" or self.schedule_steps > 0:
            return self
        return replace(self, schedule_steps=max(1, steps - self.warmup_steps))

    def round_interval_steps(self, steps_per_epoch: int) -> int:
        """FedAvg round length in local steps: `local_epochs` passes over the local data."""
        if steps_per_epoch < 1:
            raise ConsensusConfigError("steps_per_epoch must be >= 1")
        return self.local_epochs * steps_per_epoch
