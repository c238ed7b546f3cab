"""NodeConfig: one hospital node's settings, read from the node.toml that provisioning writes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Light modules only: Opacus, MONAI, torch and pydicom stay unimported for `hospital-node status`.
from consensus.config import ConsensusConfig, ConsensusConfigError
from consensus.privacy_config import PrivacyConfig, PrivacyConfigError
from hospital_node.configio import (
    ConfigError,
    deep_merge,
    from_mapping,
    migrate,
    read_toml,
    to_dict,
)
from hospital_node.data.config import DataConfig
from hospital_node.evaluation.config import EvaluationConfig, SharingConfig
from hospital_node.node.settings import (
    ExchangeSettings,
    ListenSettings,
    NodePaths,
    PeerSpec,
    RunSettings,
)
from hospital_node.provisioning.network import HOSTNAME_RE, NetworkError, parse_edge_list
from hospital_node.training.config import ModelConfig, TrainingConfig

log = logging.getLogger(__name__)

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
    "evaluation",
    "run",
    "exchange",
    "privacy",
    "metrics",
}
# Keys that earlier node.toml files kept in [training] (configio.migrate moves them).
MOVED_KEYS = {
    "training.max_steps_per_second": "run.max_steps_per_second",
    "training.checkpoint_keep": "run.checkpoint_keep",
    "training.log_every": "run.log_every",
    "training.status_every_s": "run.status_every_s",
    "training.eval_every": "evaluation.every",
}
# A node trains until stopped, checkpoints every 100 steps and evaluates every 200.
NODE_TRAINING = TrainingConfig(steps=0, checkpoint_every=100)
NODE_EVALUATION = EvaluationConfig(every=200)
_NODE_KEYS = {"name", "network", "site_dir", "results_store", "checkpoint_dir", "state_dir"}
_TRANSPORT_KEYS = {"listen_host", "listen_port", "advertised_host"}


class NodeConfigError(ValueError):
    """A node.toml that cannot be used; the message names the file and the entry to fix."""


def check_node_privacy(privacy: PrivacyConfig, training: TrainingConfig) -> None:
    """What a node must know up front to calibrate noise to a target epsilon.

    Exchange: `planned_releases` (swaps x neighbours; it is also the budget unless
    `epsilon_budget` says otherwise); DP-SGD: `planned_epochs`, or a [training] steps budget.
    """
    if privacy.target_epsilon is None:
        return
    if privacy.mode == "exchange" and privacy.planned_releases is None:
        raise PrivacyConfigError(
            "[privacy] target_epsilon with mode 'exchange' needs planned_releases: the number "
            "of releases the noise is calibrated for (or give noise_multiplier instead)"
        )
    if privacy.mode == "dpsgd" and privacy.planned_epochs is None and training.steps < 1:
        raise PrivacyConfigError(
            "[privacy] target_epsilon with mode 'dpsgd' needs planned_epochs (passes over the "
            "site's training images) or a [training] steps budget (or give noise_multiplier)"
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
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)  # cache_dir: STATE_DIR/cache if unset
    training: TrainingConfig = NODE_TRAINING
    evaluation: EvaluationConfig = NODE_EVALUATION
    run: RunSettings = field(default_factory=RunSettings)
    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    metrics: SharingConfig = field(default_factory=SharingConfig)  # [metrics]: opt-in sharing

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
        raw = read_toml(path, what="node configuration")
    except ConfigError as exc:
        raise NodeConfigError(f"{exc}; point --config at a bundle's node.toml") from exc
    try:
        merged = migrate(deep_merge(raw, overrides or {}), MOVED_KEYS, where=str(path))
        return parse_node_config(merged, base_dir=path.parent)
    except (ConfigError, ConsensusConfigError, NetworkError, ValueError) as exc:
        raise NodeConfigError(f"{path}: {exc}") from exc


def parse_node_config(raw: Mapping[str, Any], *, base_dir: Path) -> NodeConfig:
    """Validate an already-parsed node.toml; relative paths are resolved against `base_dir`."""
    unknown = set(raw) - _TABLES
    if unknown:
        raise NodeConfigError(f"unknown tables {sorted(unknown)}; allowed: {sorted(_TABLES)}")
    node = _table(raw, "node", _NODE_KEYS)
    name = _name(node.get("name"), "[node] name")
    peers = _parse_peers(raw.get("peers"), name)
    paths = _parse_paths(node, _table(raw, "tls", {"ca_cert", "cert", "key"}), base_dir)
    data = _table(raw, "data")
    data["cache_dir"] = _resolve(base_dir, data["cache_dir"]) if data.get("cache_dir") else None
    training = _section(raw, "training", NODE_TRAINING)
    privacy = from_mapping(PrivacyConfig, _table(raw, "privacy"), where="[privacy]")
    check_node_privacy(privacy, training)
    config = from_mapping(DataConfig, data, where="[data]")
    return NodeConfig(
        name=name,
        network=str(node.get("network", "ecl-network")),
        paths=paths,
        listen=_parse_listen(_table(raw, "transport", _TRANSPORT_KEYS)),
        peers=peers,
        edges=_parse_edges(raw.get("topology"), name, peers),
        consensus=_consensus(raw, training),
        model=from_mapping(ModelConfig, _table(raw, "model"), where="[model]"),
        data=replace(config, cache_dir=config.cache_dir or paths.state_dir / "cache"),
        training=training,
        evaluation=_section(raw, "evaluation", NODE_EVALUATION),
        run=from_mapping(RunSettings, _table(raw, "run"), where="[run]"),
        exchange=from_mapping(ExchangeSettings, _table(raw, "exchange"), where="[exchange]"),
        privacy=privacy,
        metrics=from_mapping(SharingConfig, _table(raw, "metrics"), where="[metrics]"),
    )


def _consensus(raw: Mapping[str, Any], training: TrainingConfig) -> ConsensusConfig:
    """[algorithm]; a cosine decay without schedule_steps decays over [training] steps."""
    consensus = from_mapping(ConsensusConfig, _algorithm(raw), where="[algorithm]")
    if consensus.lr_schedule != "cosine" or consensus.schedule_steps > 0:
        return consensus
    if training.steps < 1:
        raise NodeConfigError(
            "[algorithm] lr_schedule = 'cosine' needs schedule_steps, or a [training] steps "
            "budget to decay over"
        )
    return consensus.decaying_over(training.steps)


def _section(raw: Mapping[str, Any], key: str, default: Any) -> Any:
    """A table over the node's own defaults for that section (e.g. steps = 0 for [training])."""
    table = deep_merge(to_dict(default), _table(raw, key))
    return from_mapping(type(default), table, where=f"[{key}]")


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
    names = raw.get("nodes")
    canonical = parse_edge_list(raw.get("edges"), list(names) if names else None, "[topology]")
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
