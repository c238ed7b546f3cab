"""Configuration of the N-hospital simulation (`ecl-sim`): the nodes' own config types, plus
the simulated network and the reference's budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.config import ConsensusConfig
from consensus.privacy_config import PrivacyConfig
from data_tools.synth import SynthConfig
from hospital_node.data.site import DataConfig
from hospital_node.evaluation.config import EvaluationConfig
from hospital_node.training.config import TrainingConfig
from hospital_node.training.model import ModelConfig

# Every method of consensus/ plus the centralized reference (all hospitals' data in one place).
METHODS = (
    "centralized", "local", "gossip", "gradient-tracking", "fedavg", "ecl-pdmm", "ecl-admm",
    "ecl-isvr-pdmm", "ecl-isvr-admm",
)  # fmt: skip
# What `ecl-sim` runs unless --methods says otherwise (docs/researcher.md).
DEFAULT_METHODS = ("centralized", "local", "gossip", "ecl-pdmm", "ecl-admm", "fedavg")

# Keys of earlier versions' TOML files, moved where the nodes read them too (configio.migrate).
MOVED_KEYS: dict[str, str] = {
    "seed": "training.seed",
    "data.dir": "data_dir",
    **{f"data.synth_{k}": f"synth.{k}" for k in (
        "sites", "per_site", "test_size", "size", "difficulty", "missing_per_site", "seed"
    )},
    "training.centralized_batch": "centralized_batch",
    "training.batched": "batched",
    "training.eval_every": "evaluation.every",
    "training.eval_images": "evaluation.images",
    "training.bootstrap": "evaluation.bootstrap",
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """The simulated peer-to-peer network (ECL paper's setup: ring of 8, random exchanges)."""

    topology: str = "ring"  # ring | full | regular | edges
    degree: int = 4  # for `regular` (random k-regular graph)
    edges: tuple[str, ...] = ()  # for `edges`: "N1-N2" pairs
    exchange_interval: float = 1.0  # mean local steps between two swaps on one edge
    speeds: tuple[float, ...] = ()  # relative node speeds; empty -> seeded jitter around 1
    speed_jitter: float = 0.2  # +/- fraction for the seeded speeds
    message_loss: float = 0.0  # probability that one direction of a swap is lost


BACKENDS = ("inprocess", "ray")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Where `backend = "ray"` runs: each hospital an actor (docs/researcher.md, "Ray").

    `address`: "" starts a local Ray instance; "auto" or "HOST:PORT" joins a running cluster.
    `cpus_per_hospital` / `gpus_per_hospital`: each actor's share (0 = the machine's CPUs /
    hospitals); a fraction packs several hospitals on one device. With GPUs, set
    training.device = "cuda" as well.
    """

    address: str = ""
    cpus_per_hospital: float = 0.0
    gpus_per_hospital: float = 0.0
    object_store_mb: int = 512  # local instance only: hospitals exchange small messages


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """`ecl-sim --tune`: each method's learning rate chosen on the pooled validation splits.

    Every method gets the same grid and the same tuning budget (`budget_fraction` of
    training.steps); the reported runs then use each method's choice (docs/researcher.md).
    """

    learning_rates: tuple[float, ...] = (0.03, 0.1, 0.3)
    budget_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError("tune.learning_rates must be positive numbers")
        if not 0 < self.budget_fraction <= 1:
            raise ValueError("tune.budget_fraction must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Everything `ecl-sim` needs; TOML sections mirror the nested dataclasses.

    `model`, `data`, `training`, `evaluation`, `consensus` and `privacy` are the types a
    hospital node's node.toml holds: a simulated hospital trains exactly as a node does.
    `data_dir`: a tree from `ecl-data synth|nih`; empty -> OUT/data, generated from `synth`.
    `centralized_batch`: the reference's budget, "scaled" = the hospitals' steps on a
    hospitals-times larger batch; "same" = hospitals-times more steps at the batch size.
    `batched`: step the hospitals' models as one vmapped computation (same results).
    `per_method`: settings of one method only, "METHOD:section.field=value" (what --tune
    writes), e.g. "gossip:consensus.learning_rate=0.3".
    `backend`: "inprocess" (one process, vmapped) or "ray" (one actor per hospital, `ray`).
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    data_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(per_site=300, test_size=600))
    model: ModelConfig = field(default_factory=ModelConfig)
    # The budget from the data (`budget.with_data_budget`): 18 passes over the mean hospital's
    # train split, at least 250 local steps (on nih-dev and on the CPU demo: 250). See
    # docs/researcher.md, "Real radiographs".
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(steps=0, epochs=18.0, min_steps=250)
    )
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # lr 0.1, plain SGD steps, constant rate: on nih-dev's validation splits this scored as
    # well as momentum 0.9 + weight decay + cosine + augmentation (0.626 vs 0.616, within
    # the noise), and momentum 0.9 at lr 0.1 stalls ECL (docs/researcher.md, "Real radiographs").
    consensus: ConsensusConfig = field(
        default_factory=lambda: ConsensusConfig(learning_rate=0.1, matched_step=True)
    )
    # --dp exchange|dpsgd|off and friends (docs/privacy.md); one config for every method.
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    centralized_batch: str = "scaled"
    batched: bool = True
    per_method: tuple[str, ...] = ()
    tune: TuneConfig = field(default_factory=TuneConfig)
    backend: str = "inprocess"
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise ValueError("no methods to run")
        if self.training.steps <= 0 and self.training.epochs <= 0:
            raise ValueError("set training.steps (local steps per hospital) or training.epochs > 0")
        if self.centralized_batch not in ("scaled", "same"):
            raise ValueError("centralized_batch must be 'scaled' or 'same'")
        for entry in self.per_method:
            method, _, setting = entry.partition(":")
            if method not in METHODS or "=" not in setting:
                raise ValueError(
                    f"per_method entry {entry!r}: write METHOD:section.field=value with a "
                    f"method of {', '.join(METHODS)}"
                )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
