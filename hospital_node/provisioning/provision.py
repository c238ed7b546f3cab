"""Provisioning: the network CA, one certificate per hospital and one ready-to-run bundle each."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from hospital_node.provisioning.network import NetworkDescription, NetworkError, load_network
from hospital_node.provisioning.pki import (
    CertifiedKey,
    PkiError,
    cert_pem,
    create_ca,
    issue_leaf,
    load_ca,
    write_file,
    write_key,
)
from hospital_node.provisioning.revocation import (
    CRL_FILE,
    Revocation,
    build_crl,
    current_crl,
    publish_crl,
    record_issued,
)
from hospital_node.provisioning.revocation import refresh as refresh_crl
from hospital_node.provisioning.revocation import revoke as revoke_serials

__all__ = [
    "NetworkDescription",
    "ProvisionError",
    "load_network",
    "main",
    "provision",
    "renew",
    "revoke",
]

log = logging.getLogger(__name__)

CA_DIR = "_ca"
LEAF_VALID_DAYS = 825  # the CA/Browser Forum ceiling that TLS stacks and auditors expect
CA_README = """\
This folder holds the network certificate authority.

ca.crt      public; every bundle carries a copy.
ca.key      SECRET: whoever holds it can join the network as any hospital.
            Keep it offline (encrypted USB key or a vault), never inside a node bundle.
            It is needed only to add a hospital, renew or revoke a certificate:
                hospital-node renew NETWORK.toml --out PARENT --hospital NAME
                hospital-node revoke NAME --out PARENT
crl.pem     public, signed: the revocation list; every bundle carries a copy (nodes re-read it).
issued.json every certificate this CA issued (serial, hospital, dates): revoke reads it.
"""


class ProvisionError(RuntimeError):
    """Provisioning refused or failed; the message says what to do."""


def provision(
    network: NetworkDescription,
    out_dir: Path,
    *,
    valid_days: int = LEAF_VALID_DAYS,
    now: dt.datetime | None = None,
    force: bool = False,
) -> list[Path]:
    """Create the network CA and every hospital's bundle under `out_dir`; return the files written.

    Refuses when `out_dir/_ca/ca.key` exists (a new CA would invalidate every certificate in
    use) unless `force`; use `renew` to add or renew one hospital from the existing CA.
    """
    out_dir = Path(out_dir)
    ca_dir = out_dir / CA_DIR
    if (ca_dir / "ca.key").exists() and not force:
        raise ProvisionError(
            f"{ca_dir / 'ca.key'} already exists: use `renew` to add or renew a hospital, or "
            "--force to create a NEW CA (every hospital then needs its new bundle)"
        )
    ca = create_ca(f"{network.name} network CA", now=now)
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.chmod(0o700)
    written = [
        write_key(ca_dir / "ca.key", ca.key),
        write_file(ca_dir / "ca.crt", cert_pem(ca.cert), mode=0o644),
        write_file(ca_dir / "README.txt", CA_README.encode(), mode=0o644),
        *publish_crl(out_dir, ca_dir, build_crl(ca, [], number=1, now=now), bundles=False),
    ]
    (ca_dir / "issued.json").unlink(missing_ok=True)  # a new CA starts a new register
    for spec in network.hospitals:
        written += _write_bundle(network, spec.name, ca, out_dir, valid_days=valid_days, now=now)
    log.info(
        "provisioned network %r: %d hospitals in %s", network.name, len(network.hospitals), out_dir
    )
    return written


def renew(
    network: NetworkDescription,
    out_dir: Path,
    hospital: str,
    *,
    valid_days: int = LEAF_VALID_DAYS,
    now: dt.datetime | None = None,
) -> list[Path]:
    """Issue a new key + certificate for one hospital (new or existing) from the existing CA.

    Rewrites that hospital's bundle and the node.toml of its neighbours (their peer lists name
    it); returns every file written, so the operator knows which bundles to hand out again.
    """
    out_dir = Path(out_dir)
    spec = network.hospital(hospital)
    ca = _open_ca(out_dir)
    written = _write_bundle(network, spec.name, ca, out_dir, valid_days=valid_days, now=now)
    for peer in network.neighbours(spec.name):
        written.append(_write_node_toml(network, peer, out_dir / peer))
    log.info("renewed %s; redistribute: %s", spec.name, sorted({p.parent.name for p in written}))
    return written


def _write_bundle(
    network: NetworkDescription,
    name: str,
    ca: CertifiedKey,
    out_dir: Path,
    *,
    valid_days: int,
    now: dt.datetime | None,
) -> list[Path]:
    spec = network.hospital(name)
    leaf = issue_leaf(ca, spec.name, sans=spec.sans, valid_days=valid_days, now=now)
    bundle = out_dir / spec.name
    bundle.mkdir(parents=True, exist_ok=True)
    ca_dir = out_dir / CA_DIR
    crl = current_crl(ca_dir, ca)  # the bundle carries the network's current revocation list
    written = [
        write_key(bundle / f"{spec.name}.key", leaf.key),
        write_file(bundle / f"{spec.name}.crt", cert_pem(leaf.cert), mode=0o644),
        write_file(bundle / "ca.crt", cert_pem(ca.cert), mode=0o644),
        write_file(bundle / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM), mode=0o644),
        _write_node_toml(network, spec.name, bundle),
    ]
    record_issued(ca_dir, leaf.cert)
    return written


def _open_ca(out_dir: Path) -> CertifiedKey:
    try:
        return load_ca(out_dir / CA_DIR / "ca.crt", out_dir / CA_DIR / "ca.key")
    except PkiError as exc:
        raise ProvisionError(
            f"{exc}; run `provision` first (or point --out at its folder)"
        ) from exc


def revoke(
    out_dir: Path,
    hospital: str,
    *,
    serials: list[int] | None = None,
    reason: str = "key-compromise",
    now: dt.datetime | None = None,
) -> Revocation:
    """Revoke every certificate issued to `hospital` (or only `serials`): a new signed CRL in
    the CA folder and in every bundle. Hand each hospital its new crl.pem (it is public and
    signed); nodes pick it up without a restart. Then `renew` the hospital if it stays."""
    out_dir = Path(out_dir)
    try:
        return revoke_serials(
            out_dir, out_dir / CA_DIR, _open_ca(out_dir), hospital, serials=serials,
            reason=reason, now=now,
        )  # fmt: skip
    except PkiError as exc:
        raise ProvisionError(str(exc)) from exc


def refresh_revocations(out_dir: Path, *, now: dt.datetime | None = None) -> list[Path]:
    """Re-sign the CRL with a new next-update date (nodes warn once it has passed)."""
    out_dir = Path(out_dir)
    return refresh_crl(out_dir, out_dir / CA_DIR, _open_ca(out_dir), now=now)


def node_config(network: NetworkDescription, name: str) -> dict[str, Any]:
    """The node.toml content for one hospital; paths are relative to the bundle folder."""
    spec = network.hospital(name)
    peers = [network.hospital(p) for p in network.neighbours(name)]
    return {
        "node": {
            "name": spec.name,
            "network": network.name,
            "site_dir": spec.site_dir,
            "results_store": spec.results_store,
            "checkpoint_dir": spec.checkpoint_dir,
        },
        "transport": {
            "listen_host": spec.listen,
            "listen_port": spec.port,
            "advertised_host": spec.host,
        },
        "tls": {"ca_cert": "ca.crt", "cert": f"{spec.name}.crt", "key": f"{spec.name}.key"},
        "peers": [{"name": p.name, "host": p.host, "port": p.port} for p in peers],
        "algorithm": dict(network.algorithm),
        # The whole graph: symmetric edge weights (docs/algorithm.md eq. 6) need the
        # neighbours' degrees, which the peer list alone does not give on irregular graphs.
        "topology": {"edges": [list(edge) for edge in network.edges]},
    }


PRIVACY_DEFAULT = """
# Differential privacy (docs/privacy.md); "hospital-node run --dp/--epsilon/--noise-multiplier/
# --clip" override it. The spent epsilon is kept in state/privacy.json and never resets.
[privacy]
mode = "off"                 # "off" | "exchange" (noisy model releases, protects the site)
                             # | "dpsgd" (noisy training steps, protects one image)
# noise_multiplier = 1.0     # give this, or target_epsilon with its plan:
# target_epsilon = 8.0
# planned_releases = 1000    # exchange + target_epsilon: releases the noise must cover
# planned_epochs = 10        # dpsgd + target_epsilon: passes over the training images
# clip_norm = 1.0            # required when mode is not "off"
# delta = 1e-5               # default min(1e-5, 1 / training images)
# accountant = "rdp"         # or "prv"
# epsilon_budget = 8.0       # exchange: stop sending at this epsilon (default target_epsilon)
"""


def _write_node_toml(network: NetworkDescription, name: str, bundle: Path) -> Path:
    header = (
        f"# node.toml for hospital {name!r} of network {network.name!r}, written by provisioning.\n"
        "# Relative paths are relative to this file's folder.\n"
    )
    text = header + dumps_toml(node_config(network, name)) + PRIVACY_DEFAULT
    return write_file(bundle / "node.toml", text.encode("utf-8"), mode=0o644)


# --- a small TOML writer (tomllib only reads): tables, arrays of tables, scalars, lists ---------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            ("nan" if math.isnan(value) else "inf" if value > 0 else "-inf")
            if not math.isfinite(value)
            else repr(value)
        )
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return (
            "{ "
            + ", ".join(f"{_key(k)} = {_value(v, f'{where}.{k}')}" for k, v in value.items())
            + " }"
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    raise ProvisionError(f"{where}: cannot write {type(value).__name__} values to TOML")


def dumps_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """TOML text for nested mappings; lists of mappings become arrays of tables."""
    lines: list[str] = []
    tables = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value, False))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables.append((key, value, True))
        else:
            lines.append(f"{_key(key)} = {_value(value, prefix + key)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value, is_array in tables:
        full = f"{prefix}{_key(key)}"
        for item in value if is_array else [value]:
            header = f"[[{full}]]" if is_array else f"[{full}]"
            text += f"\n{header}\n" + dumps_toml(item, prefix=f"{full}.")
    return text


# --- command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hospital_node.provisioning.provision", description=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the network CA and every hospital's bundle")
    renew_cmd = sub.add_parser("renew", help="add or renew one hospital from the existing CA")
    for cmd in (init, renew_cmd):
        cmd.add_argument("network", type=Path, help="network description TOML")
        cmd.add_argument("--out", type=Path, required=True, help="output folder (bundles + _ca/)")
        cmd.add_argument("--valid-days", type=int, default=LEAF_VALID_DAYS)
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA (re-issues everything)"
    )
    renew_cmd.add_argument("--hospital", required=True, help="hospital name from the network file")
    revoke_cmd = sub.add_parser("revoke", help="revoke a hospital's certificates (signed CRL)")
    revoke_cmd.add_argument("hospital", help="hospital name")
    revoke_cmd.add_argument("--out", type=Path, required=True, help="folder of _ca/ and bundles")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns a process exit status (0 ok, 2 refused or invalid input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "revoke":
            paths = list(revoke(args.out, args.hospital).written)
        elif args.command == "init":
            network = load_network(args.network)
            paths = provision(network, args.out, valid_days=args.valid_days, force=args.force)
        else:
            network = load_network(args.network)
            paths = renew(network, args.out, args.hospital, valid_days=args.valid_days)
    except (NetworkError, ProvisionError, PkiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
