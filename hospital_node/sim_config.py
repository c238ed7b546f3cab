"""Configuration of the N-hospital simulation (`ecl-sim`): one frozen dataclass per component."""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.config import ConsensusConfig
from consensus.privacy import PrivacyConfig
from hospital_node.model import ModelConfig

METHODS = ("centralized", "local", "gossip", "ecl-pdmm", "ecl-admm", "fedavg")
DECENTRALIZED = ("local", "gossip", "ecl-pdmm", "ecl-admm", "fedavg")


@dataclass(frozen=True)
class DataSourceConfig:
    """Where the hospitals' site folders come from; empty `dir` = the built-in synthetic set."""

    dir: str = ""  # a tree from `ecl-data synth|nih`; empty -> OUT/data, generated if missing
    image_size: int = 64  # training resolution (images are resized once, then cached)
    cache_dir: str = ""  # decoded-image cache; empty -> the user cache directory
    synth_sites: int = 8
    synth_per_site: int = 300  # mean images per hospital (sizes differ per hospital)
    synth_test_size: int = 600  # common held-out test set
    synth_size: int = 128  # DICOM matrix written by the phantom generator
    synth_difficulty: float = 0.5  # 0 easy .. 1 hard (lesion contrast, size jitter, noise)
    synth_missing_per_site: int = 5  # findings each hospital never sees
    synth_seed: int = 0


@dataclass(frozen=True)
class TrainingConfig:
    """The local training loop, the same for every method (same budget of gradient evaluations)."""

    steps: int = 250  # local steps per hospital (make demo: ~9 min on 2 idle cores)
    batch_size: int = 16
    # centralized reference: "scaled" = same steps on a hospitals-times larger batch;
    # "same" = hospitals-times more steps at this batch size. Same gradient evaluations either way.
    centralized_batch: str = "scaled"
    positive_weighting: bool = False  # BCE pos_weight = n_neg / n_pos per finding (capped)
    eval_every: int = 50  # evaluate on the common test subset every this many local steps
    eval_images: int = 400  # common-test images for intermediate evaluations (final uses all)
    bootstrap: int = 200  # bootstrap resamples (over patients) for the final 95% CIs
    device: str = "cpu"
    batched: bool = True  # step all hospitals' models as one vmapped computation
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    checkpoint_every: int = 50  # local steps between resumable checkpoints


@dataclass(frozen=True)
class NetworkConfig:
    """The simulated peer-to-peer network (ECL paper's setup: ring of 8, random exchanges)."""

    topology: str = "ring"  # ring | full | regular | edges
    degree: int = 4  # for `regular` (random k-regular graph)
    edges: tuple[str, ...] = ()  # for `edges`: "N1-N2" pairs
    exchange_interval: float = 1.0  # mean local steps between two swaps on one edge
    speeds: tuple[float, ...] = ()  # relative node speeds; empty -> seeded jitter around 1
    speed_jitter: float = 0.2  # +/- fraction for the seeded speeds
    message_loss: float = 0.0  # probability that one direction of a swap is lost


@dataclass(frozen=True)
class SimulationConfig:
    """Everything `ecl-sim` needs; TOML sections mirror the nested dataclasses."""

    methods: tuple[str, ...] = METHODS
    seed: int = 0
    data: DataSourceConfig = field(default_factory=DataSourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # lr 0.1: plain SGD from scratch on the compact network (calibrate_phantom uses the same).
    consensus: ConsensusConfig = field(
        default_factory=lambda: ConsensusConfig(learning_rate=0.1, matched_step=True)
    )
    # --dp exchange|dpsgd|off and friends (docs/privacy.md); one config for every method.
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise ValueError("no methods to run")
        if self.training.steps <= 0 or self.training.batch_size <= 0:
            raise ValueError("training.steps and training.batch_size must be positive")
        if self.training.centralized_batch not in ("scaled", "same"):
            raise ValueError("training.centralized_batch must be 'scaled' or 'same'")
        if self.privacy.mode == "dpsgd" and self.training.positive_weighting:
            raise ValueError(
                "DP-SGD cannot cover training.positive_weighting: its weights are computed from "
                "the site's labels outside the private mechanism; set it to false"
            )
