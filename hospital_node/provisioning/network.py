"""The network description (hospitals, edges, algorithm settings) read from TOML and validated."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hospital_node.configio import ConfigError, read_toml

# A DNS label: safe as a file name, an X.509 CN, a DNS SAN (clients verify servers against it)
# and a wire-format node name.
HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SAN_RE = re.compile(r"(\*\.)?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
TOPOLOGIES = ("ring",)
_HOSPITAL_KEYS = {
    "name", "host", "port", "site_dir", "listen", "extra_sans", "results_store", "checkpoint_dir",
}  # fmt: skip
_TOP_KEYS = {"name", "hospitals", "edges", "topology", "algorithm"}


class NetworkError(ValueError):
    """A network description that cannot be used; the message names the entry to fix."""


@dataclass(frozen=True)
class HospitalSpec:
    """One hospital: `host`:`port` is where its neighbours reach it."""

    name: str
    host: str
    port: int
    site_dir: str
    listen: str = "0.0.0.0"
    extra_sans: tuple[str, ...] = ()
    results_store: str = "state/results.sqlite"
    checkpoint_dir: str = "state/checkpoints"

    @property
    def sans(self) -> tuple[str, ...]:
        """Certificate SANs: the name first (what clients verify), then addresses and extras."""
        names = [self.name, self.host, *self.extra_sans]
        if self.host in ("127.0.0.1", "localhost", "::1"):
            names += ["localhost", "127.0.0.1"]
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class NetworkDescription:
    """Hospitals, undirected edges (sorted name pairs) and the algorithm table, verbatim."""

    name: str
    hospitals: tuple[HospitalSpec, ...]
    edges: tuple[tuple[str, str], ...]
    algorithm: Mapping[str, Any] = field(default_factory=dict)

    def hospital(self, name: str) -> HospitalSpec:
        for spec in self.hospitals:
            if spec.name == name:
                return spec
        known = ", ".join(h.name for h in self.hospitals)
        raise NetworkError(f"no hospital named {name!r} in network {self.name!r} (known: {known})")

    def neighbours(self, name: str) -> tuple[str, ...]:
        """Names of the hospitals sharing an edge with `name`, sorted."""
        out = {b for a, b in self.edges if a == name} | {a for a, b in self.edges if b == name}
        return tuple(sorted(out))


def load_network(path: Path) -> NetworkDescription:
    """Read and validate a network description TOML file (format: docs/hospital-it.md)."""
    try:
        data = read_toml(path, what="network description")
    except ConfigError as exc:
        raise NetworkError(str(exc)) from exc
    return parse_network(data, where=str(path))


def parse_network(data: Mapping[str, Any], *, where: str = "network") -> NetworkDescription:
    """Validate an already-parsed description; every error names `where` and the entry."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise NetworkError(
            f"{where}: unknown top-level keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    raw_hospitals = data.get("hospitals")
    if not isinstance(raw_hospitals, list) or len(raw_hospitals) < 2:
        raise NetworkError(f"{where}: need at least two [[hospitals]] entries")
    hospitals = tuple(
        _parse_hospital(h, f"{where}: hospitals[{i}]") for i, h in enumerate(raw_hospitals)
    )
    _check_unique(hospitals, where)
    names = [h.name for h in hospitals]
    edges = _parse_edges(data, names, where)
    _check_connected(names, edges, where)
    algorithm = data.get("algorithm", {})
    if not isinstance(algorithm, Mapping):
        raise NetworkError(f"{where}: [algorithm] must be a table")
    name = data.get("name", "ecl-network")
    if not isinstance(name, str) or not name.strip():
        raise NetworkError(f"{where}: `name` must be a non-empty string")
    return NetworkDescription(
        name=name, hospitals=hospitals, edges=edges, algorithm=dict(algorithm)
    )


def _require_str(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise NetworkError(f"{where}: `{key}` must be a non-empty string, got {value!r}")
    return value


def _parse_hospital(raw: Any, where: str) -> HospitalSpec:
    if not isinstance(raw, Mapping):
        raise NetworkError(f"{where}: must be a table")
    unknown = set(raw) - _HOSPITAL_KEYS
    if unknown:
        raise NetworkError(
            f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_HOSPITAL_KEYS)}"
        )
    name = _require_str(raw, "name", where)
    if not HOSTNAME_RE.fullmatch(name):
        raise NetworkError(
            f"{where}: name {name!r} must be 1-63 letters, digits or '-' (not at either end): "
            "it becomes a file name, the certificate CN and a DNS name"
        )
    port = raw.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise NetworkError(f"{where} ({name}): `port` must be an integer 1-65535, got {port!r}")
    host = _require_str(raw, "host", f"{where} ({name})")
    extra = raw.get("extra_sans", [])
    if not isinstance(extra, list) or not all(isinstance(s, str) for s in extra):
        raise NetworkError(f"{where} ({name}): `extra_sans` must be a list of strings")
    for san in (host, *extra):
        _check_san(san, f"{where} ({name})")
    optional = {
        k: _require_str(raw, k, f"{where} ({name})")
        for k in ("listen", "results_store", "checkpoint_dir")
        if k in raw
    }
    return HospitalSpec(
        name=name,
        host=host,
        port=port,
        site_dir=_require_str(raw, "site_dir", f"{where} ({name})"),
        extra_sans=tuple(extra),
        **optional,
    )


def _check_san(value: str, where: str) -> None:
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not _SAN_RE.fullmatch(value):
        raise NetworkError(f"{where}: {value!r} is neither an IP address nor a DNS name")


def _check_unique(hospitals: tuple[HospitalSpec, ...], where: str) -> None:
    seen_names: set[str] = set()
    seen_addresses: dict[tuple[str, int], str] = {}
    for h in hospitals:
        if h.name.lower() in seen_names:
            raise NetworkError(
                f"{where}: hospital name {h.name!r} appears twice (names are case-insensitive)"
            )
        seen_names.add(h.name.lower())
        address = (h.host.lower(), h.port)
        if address in seen_addresses:
            raise NetworkError(
                f"{where}: {h.name!r} and {seen_addresses[address]!r} both use {h.host}:{h.port}; "
                "give each node on one host its own port"
            )
        seen_addresses[address] = h.name
    names = {h.name.lower(): h.name for h in hospitals}
    for h in hospitals:
        # A client verifies a server against the peer's NAME among the certificate's SANs,
        # so no certificate may carry another hospital's name.
        clash = [names[s.lower()] for s in h.sans if names.get(s.lower(), h.name) != h.name]
        if clash:
            raise NetworkError(
                f"{where}: {h.name!r} lists hospital name {clash[0]!r} as host or extra SAN; "
                "its certificate would then also pass for that hospital"
            )


def _parse_edges(
    data: Mapping[str, Any], names: list[str], where: str
) -> tuple[tuple[str, str], ...]:
    has_edges, has_topology = "edges" in data, "topology" in data
    if has_edges == has_topology:
        raise NetworkError(
            f'{where}: give exactly one of `edges = [[a, b], ...]` or `topology = "ring"`'
        )
    if has_topology:
        if data["topology"] not in TOPOLOGIES:
            raise NetworkError(
                f"{where}: unknown topology {data['topology']!r}; known: {list(TOPOLOGIES)}"
            )
        pairs = [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]
        return tuple(sorted({tuple(sorted(p)) for p in pairs}))  # a ring of two is one edge
    return parse_edge_list(data["edges"], names, where)


def parse_edge_list(raw: Any, names: list[str] | None, where: str) -> tuple[tuple[str, str], ...]:
    """`[[a, b], ...]` as sorted, distinct name pairs; the one edge parser of network.toml and
    node.toml. `names`: the hospitals an edge may join (None: any hospital name)."""
    if not isinstance(raw, list):
        raise NetworkError(f"{where}: `edges` must be a list of [a, b] pairs")
    edges: set[tuple[str, str]] = set()
    for i, pair in enumerate(raw):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise NetworkError(
                f"{where}: edges[{i}] must be a pair of hospital names, got {pair!r}"
            )
        for end in pair:
            if (names is not None and end not in names) or not HOSTNAME_RE.fullmatch(end):
                raise NetworkError(
                    f"{where}: edges[{i}] names unknown hospital {end!r}; known: {names}"
                )
        if pair[0] == pair[1]:
            raise NetworkError(f"{where}: edges[{i}] joins {pair[0]!r} to itself")
        edge = (min(pair), max(pair))
        if edge in edges:
            raise NetworkError(f"{where}: edges[{i}] {pair} is listed twice")
        edges.add(edge)
    return tuple(sorted(edges))


def _check_connected(names: list[str], edges: tuple[tuple[str, str], ...], where: str) -> None:
    """Consensus needs a connected graph: every hospital reachable from the first."""
    reached, frontier = {names[0]}, [names[0]]
    while frontier:
        node = frontier.pop()
        for a, b in edges:
            other = b if a == node else a if b == node else None
            if other is not None and other not in reached:
                reached.add(other)
                frontier.append(other)
    missing = [n for n in names if n not in reached]
    if missing:
        raise NetworkError(
            f"{where}: hospitals {missing} are not connected to {names[0]!r}; add edges"
        )
