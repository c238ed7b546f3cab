"""NodeConfig: one hospital node's settings, read from the node.toml that provisioning writes."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consensus.config import ConsensusConfig, ConsensusConfigError
from consensus.privacy_config import PrivacyConfig, PrivacyConfigError
from hospital_node.configio import ConfigError, deep_merge, from_mapping
from hospital_node.network import HOSTNAME_RE

if TYPE_CHECKING:  # Opacus, MONAI and pydicom stay unimported for `hospital-node status`
    from hospital_node.data import DataConfig
    from hospital_node.model import ModelConfig

log = logging.getLogger(__name__)

JOIN_MODES = ("fetch", "scratch")
INITIATE_MODES = ("lower", "both")
_TABLES = {
    "node",
    "transport",
    "tls",
    "peers",
    "algorithm",
    "topology",
    "model",
    "data",
    "training",
    "exchange",
    "privacy",
}
_NODE_KEYS = {"name", "network", "site_dir", "results_store", "checkpoint_dir", "state_dir"}
_TRANSPORT_KEYS = {"listen_host", "listen_port", "advertised_host"}


class NodeConfigError(ValueError):
    """A node.toml that cannot be used; the message names the file and the entry to fix."""


@dataclass(frozen=True, kw_only=True)
class PeerSpec:
    """One neighbour: its name (its certificate CN) and where to dial it."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class NodePaths:
    """Where the node reads and writes; relative entries in node.toml are relative to its folder."""

    site_dir: Path
    results_store: Path
    checkpoint_dir: Path
    state_dir: Path  # boot_epoch.json, status.json, the data cache by default
    ca_cert: Path
    cert: Path
    key: Path

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def boot_epoch_file(self) -> Path:
        return self.state_dir / "boot_epoch.json"

    @property
    def privacy_ledger(self) -> Path:
        """The spent epsilon, rewritten (fsynced) before any private message leaves."""
        return self.state_dir / "privacy.json"


@dataclass(frozen=True, kw_only=True)
class ListenSettings:
    """The one TCP port of the node: what it binds and what its neighbours dial."""

    host: str = "0.0.0.0"
    port: int = 50051
    advertised_host: str = "127.0.0.1"

    @property
    def local_address(self) -> str:
        """Where a process on this machine reaches the node (the status command's health check)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """The local training loop ([training] in node.toml); every field has a default."""

    batch_size: int = 16
    max_steps_per_second: float = 0.0  # 0 = as fast as the machine goes
    checkpoint_every: int = 100  # steps; a checkpoint is also written on SIGTERM
    checkpoint_keep: int = 3
    eval_every: int = 200  # steps between local-test evaluations (0 = never)
    log_every: int = 20  # steps between metric rows in the results store
    seed: int = 0  # same seed on every node: the same initial model everywhere
    max_positive_weight: float = 20.0
    status_every_s: float = 2.0  # how often STATE_DIR/status.json is rewritten

    def __post_init__(self) -> None:
        for name in ("batch_size", "checkpoint_every", "checkpoint_keep", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"[training] {name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.max_steps_per_second < 0 or self.status_every_s <= 0:
            raise ValueError(
                "[training] eval_every and max_steps_per_second must be >= 0, status_every_s > 0"
            )


@dataclass(frozen=True, kw_only=True)
class ExchangeSettings:
    """Swaps with the neighbours ([exchange] in node.toml); every field has a default.

    `initiate = "lower"`: on each edge only the end whose name sorts first starts swaps (one
    swap stream per edge, half the traffic); "both": both ends do, twice the swap rate.
    `join = "fetch"`: a node with no checkpoint first asks its neighbours for their current
    model (for `join_timeout_s`), then starts from scratch if none answered.
    """

    mean_interval_s: float = 10.0
    initiate: str = "lower"
    max_parallel: int = 2
    join: str = "fetch"
    join_timeout_s: float = 30.0
    retry_max_attempts: int = 5
    retry_initial_backoff_s: float = 1.0
    retry_max_backoff_s: float = 30.0
    retry_give_up_after_s: float = 300.0
    reconnect_backoff_max_s: float = 10.0
    base_deadline_s: float = 10.0
    shutdown_grace_s: float = 5.0
    max_pending_per_peer: int = 4  # received, validated messages waiting for the next step

    def __post_init__(self) -> None:
        if self.join not in JOIN_MODES:
            raise ValueError(f"[exchange] join={self.join!r}: choose one of {JOIN_MODES}")
        if self.initiate not in INITIATE_MODES:
            raise ValueError(f"[exchange] initiate={self.initiate!r}: choose {INITIATE_MODES}")
        positive = ("mean_interval_s", "retry_initial_backoff_s", "base_deadline_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"[exchange] {name} must be > 0, got {getattr(self, name)}")
        if min(self.max_parallel, self.retry_max_attempts, self.max_pending_per_peer) < 1:
            raise ValueError(
                "[exchange] max_parallel, retry_max_attempts, max_pending_per_peer must be >= 1"
            )


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """[model]: which network (hospital_node.model.ModelConfig; image_size comes from [data])."""

    architecture: str = "compact"
    norm_groups: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.architecture not in ("compact", "densenet121"):
            raise ValueError(f"[model] architecture={self.architecture!r}: compact | densenet121")


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """[data]: decoding of the site folder (hospital_node.data.DataConfig)."""

    image_size: int = 64
    cache_dir: Path | None = None  # None: STATE_DIR/cache
    workers: int = 0

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 2048 or self.workers < 0:
            raise ValueError("[data] image_size must be 8..2048 and workers >= 0")


@dataclass(frozen=True, kw_only=True)
class PrivacySettings:
    """[privacy]: differential privacy of this node (docs/privacy.md); default off.

    The fields are those of consensus.privacy_config.PrivacyConfig (the simulation's [privacy]
    table, whose checks run here too, without importing Opacus: `hospital-node status` stays
    quick) plus `planned_epochs`; `privacy_config()` builds the PrivacyConfig the mechanisms
    take.
    exchange + target_epsilon needs `planned_releases` (swaps x neighbours the noise must
    cover; it is also the budget unless `epsilon_budget` says otherwise); dpsgd +
    target_epsilon needs `planned_epochs` (passes over the site's training images).
    """

    mode: str = "off"
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    clip_norm: float | None = None
    delta: float | None = None  # default min(1e-5, 1 / training images)
    accountant: str = "rdp"
    planned_releases: int | None = None
    epsilon_budget: float | None = None
    planned_epochs: int | None = None

    def __post_init__(self) -> None:
        try:  # the checks shared with the simulation; consensus.privacy_config has no Opacus
            self.privacy_config()
        except PrivacyConfigError as exc:
            raise ValueError(str(exc)) from exc
        if self.mode != "off":
            self._check_plan()

    def _check_plan(self) -> None:
        exchange = self.mode == "exchange"
        if not exchange and (self.planned_releases, self.epsilon_budget) != (None, None):
            raise ValueError(
                "[privacy] planned_releases and epsilon_budget are for mode 'exchange'; "
                "dpsgd takes planned_epochs"
            )
        if exchange and self.planned_epochs is not None:
            raise ValueError("[privacy] planned_epochs is for mode 'dpsgd'")
        plan, unit = ("planned_releases", "releases") if exchange else ("planned_epochs", "epochs")
        planned = getattr(self, plan)
        if planned is not None and planned < 1:
            raise ValueError(f"[privacy] {plan} must be >= 1, got {planned}")
        if self.target_epsilon is not None and planned is None:
            raise ValueError(
                f"[privacy] target_epsilon with mode {self.mode!r} needs {plan}: the number of "
                f"{unit} the noise is calibrated for (or give noise_multiplier instead)"
            )

    def privacy_config(self) -> PrivacyConfig:
        """The mechanisms' PrivacyConfig (validated; Opacus is imported only to calibrate)."""
        return PrivacyConfig(
            mode=self.mode,
            noise_multiplier=self.noise_multiplier,
            target_epsilon=self.target_epsilon,
            planned_releases=self.planned_releases,
            clip_norm=self.clip_norm,
            delta=self.delta,
            accountant=self.accountant,
            epsilon_budget=self.epsilon_budget,
        )


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Everything one hospital node needs; built once by `load_node_config`, passed down."""

    name: str
    network: str
    paths: NodePaths
    listen: ListenSettings
    peers: tuple[PeerSpec, ...]
    edges: tuple[tuple[str, str], ...] | None  # whole-network edges, when node.toml has them
    consensus: ConsensusConfig
    model: ModelSettings
    data: DataSettings
    training: TrainingSettings
    exchange: ExchangeSettings
    privacy: PrivacySettings = PrivacySettings()

    def model_config(self) -> ModelConfig:
        from hospital_node.model import ModelConfig  # imports MONAI: only where a model is built

        m = self.model
        return ModelConfig(
            architecture=m.architecture,
            image_size=self.data.image_size,
            norm_groups=m.norm_groups,
            dropout=m.dropout,
        )

    def data_config(self) -> DataConfig:
        from hospital_node.data import DataConfig  # imports pydicom: only where data is read

        cache = self.data.cache_dir or self.paths.state_dir / "cache"
        return DataConfig(
            image_size=self.data.image_size, cache_dir=cache, workers=self.data.workers
        )

    @property
    def peer_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.peers)

    def initiates_with(self, peer: str) -> bool:
        """Whether this node starts swaps on the edge to `peer` (see ExchangeSettings)."""
        return self.exchange.initiate == "both" or self.name < peer

    def edge_weights(self) -> dict[str, float]:
        """Symmetric weights 1 / max(deg_i, deg_j) (eq. 6) when the network's edges are known.

        Without a [topology] table the neighbours' degrees are unknown and every neighbour is
        assumed to have this node's degree: exact on a ring or any regular graph.
        """
        own = len(self.peers)
        if self.edges is None:
            return {p.name: 1.0 / own for p in self.peers}
        degree = {p.name: sum(p.name in edge for edge in self.edges) for p in self.peers}
        return {p: 1.0 / max(own, d) for p, d in degree.items()}


def load_node_config(path: Path, overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """Read node.toml (+ `section.field` overrides, e.g. from `--set`) and validate it."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NodeConfigError(
            f"{path} does not exist; point --config at a bundle's node.toml"
        ) from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NodeConfigError(f"cannot read {path}: {exc}") from exc
    try:
        return parse_node_config(deep_merge(raw, overrides or {}), base_dir=path.parent)
    except (ConfigError, ConsensusConfigError, ValueError) as exc:  # NodeConfigError too
        raise NodeConfigError(f"{path}: {exc}") from exc


def parse_node_config(raw: Mapping[str, Any], *, base_dir: Path) -> NodeConfig:
    """Validate an already-parsed node.toml; relative paths are resolved against `base_dir`."""
    unknown = set(raw) - _TABLES
    if unknown:
        raise NodeConfigError(f"unknown tables {sorted(unknown)}; allowed: {sorted(_TABLES)}")
    node = _table(raw, "node", _NODE_KEYS)
    name = _name(node.get("name"), "[node] name")
    peers = _parse_peers(raw.get("peers"), name)
    data = _table(raw, "data")
    if data.get("cache_dir"):
        data["cache_dir"] = _resolve(base_dir, data["cache_dir"])
    return NodeConfig(
        name=name,
        network=str(node.get("network", "ecl-network")),
        paths=_parse_paths(node, _table(raw, "tls", {"ca_cert", "cert", "key"}), base_dir),
        listen=_parse_listen(_table(raw, "transport", _TRANSPORT_KEYS)),
        peers=peers,
        edges=_parse_edges(raw.get("topology"), name, peers),
        consensus=from_mapping(ConsensusConfig, _algorithm(raw), where="[algorithm]"),
        model=from_mapping(ModelSettings, _table(raw, "model"), where="[model]"),
        data=from_mapping(DataSettings, data, where="[data]"),
        training=from_mapping(TrainingSettings, _table(raw, "training"), where="[training]"),
        exchange=from_mapping(ExchangeSettings, _table(raw, "exchange"), where="[exchange]"),
        privacy=from_mapping(PrivacySettings, _table(raw, "privacy"), where="[privacy]"),
    )


def _table(raw: Mapping[str, Any], key: str, allowed: set[str] | None = None) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise NodeConfigError(f"[{key}] must be a table")
    if allowed is not None and set(value) - allowed:
        bad = sorted(set(value) - allowed)
        raise NodeConfigError(f"[{key}]: unknown keys {bad}; allowed: {sorted(allowed)}")
    return dict(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.fullmatch(value):
        raise NodeConfigError(
            f"{where} must be a hospital name (letters, digits, '-'), got {value!r}"
        )
    return value


def _resolve(base_dir: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _parse_paths(node: Mapping[str, Any], tls: Mapping[str, Any], base_dir: Path) -> NodePaths:
    if "site_dir" not in node:
        raise NodeConfigError("[node] site_dir is missing: the folder with labels.csv and dicom/")
    name = node.get("name")
    tls_files = {"ca_cert": "ca.crt", "cert": f"{name}.crt", "key": f"{name}.key"} | dict(tls)
    return NodePaths(
        site_dir=_resolve(base_dir, node["site_dir"]),
        results_store=_resolve(base_dir, node.get("results_store", "state/results.sqlite")),
        checkpoint_dir=_resolve(base_dir, node.get("checkpoint_dir", "state/checkpoints")),
        state_dir=_resolve(base_dir, node.get("state_dir", "state")),
        **{k: _resolve(base_dir, v) for k, v in tls_files.items()},
    )


def _parse_listen(transport: Mapping[str, Any]) -> ListenSettings:
    names = {"listen_host": "host", "listen_port": "port", "advertised_host": "advertised_host"}
    renamed = {names[k]: v for k, v in transport.items()}
    settings = from_mapping(ListenSettings, renamed, where="[transport]")
    if not 1 <= settings.port <= 65535:
        raise NodeConfigError(f"[transport] listen_port must be 1-65535, got {settings.port}")
    return settings


def _parse_peers(raw: Any, own: str) -> tuple[PeerSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise NodeConfigError("no [[peers]]: a node needs at least one neighbour")
    peers = []
    for i, entry in enumerate(raw):
        where = f"peers[{i}]"
        if not isinstance(entry, Mapping) or set(entry) - {"name", "host", "port"}:
            raise NodeConfigError(f"{where} must be a table with name, host, port")
        port = entry.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise NodeConfigError(f"{where}: port must be an integer 1-65535, got {port!r}")
        host = entry.get("host")
        if not isinstance(host, str) or not host:
            raise NodeConfigError(f"{where}: host must be a non-empty string")
        peers.append(PeerSpec(name=_name(entry.get("name"), f"{where} name"), host=host, port=port))
    names = [p.name for p in peers]
    if own in names or len(set(names)) != len(names):
        raise NodeConfigError(f"[[peers]] must be distinct and exclude the node itself: {names}")
    return tuple(sorted(peers, key=lambda p: p.name))


def _parse_edges(
    raw: Any, own: str, peers: tuple[PeerSpec, ...]
) -> tuple[tuple[str, str], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"edges", "nodes"}:
        raise NodeConfigError("[topology] may hold `nodes` and `edges = [[a, b], ...]` only")
    edges = raw.get("edges")
    if not isinstance(edges, list) or not all(
        isinstance(e, list) and len(e) == 2 and all(isinstance(n, str) for n in e) for e in edges
    ):
        raise NodeConfigError("[topology] edges must be a list of [a, b] name pairs")
    canonical = tuple(sorted({(min(e), max(e)) for e in edges}))
    mine = {b if a == own else a for a, b in canonical if own in (a, b)}
    if mine != {p.name for p in peers}:
        raise NodeConfigError(
            f"[topology] edges give {own} the neighbours {sorted(mine)}, [[peers]] lists "
            f"{sorted(p.name for p in peers)}; re-provision so both agree"
        )
    return canonical


def _algorithm(raw: Mapping[str, Any]) -> dict[str, Any]:
    table = _table(raw, "algorithm")
    if "privacy" in table:  # never ignore a privacy setting silently
        raise NodeConfigError(
            "[algorithm.privacy] is not read: move its entries to a top-level [privacy] table"
        )
    return table
