"""`hospital-node`: provision a network, run one hospital's node, show its status, repair it."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from consensus.transport.tls import TlsConfigError
from hospital_node.configio import ConfigError, deep_merge, parse_overrides
from hospital_node.node.config import NodeConfigError, load_node_config
from hospital_node.node.state import NodeStateError
from hospital_node.node.status import collect_status, format_status
from hospital_node.privacy.flags import add_privacy_arguments, privacy_overrides
from hospital_node.provisioning.network import NetworkError, load_network
from hospital_node.provisioning.pki import PkiError
from hospital_node.provisioning.provision import (
    LEAF_VALID_DAYS,
    ProvisionError,
    provision,
    refresh_revocations,
    renew,
    revoke,
)
from hospital_node.provisioning.revocation import REASONS

log = logging.getLogger("hospital_node")

EPILOG = """\
examples:
  hospital-node provision network.toml --out bundles/
  hospital-node renew network.toml --out bundles/ --hospital N2
  hospital-node run --config bundles/N1/node.toml
  hospital-node run --config bundles/N1/node.toml --set exchange.mean_interval_s=5
  hospital-node run --config bundles/N1/node.toml --dp dpsgd --noise-multiplier 1.1 --clip 1
  hospital-node status --config bundles/N1/node.toml --json
  hospital-node revoke N2 --out bundles/          (coordinator: then hand out crl.pem)
  hospital-node reset-edge --config bundles/N1/node.toml --peer N2   (node stopped)

Exit status: 0 ok; 1 the node failed while running; 2 bad configuration or input;
3 (status only) the node is not running or not healthy.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hospital-node",
        description="One hospital's edge-consensus node: trains on the local site folder and "
        "swaps consensus variables with its neighbours over gRPC with mutual TLS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_provisioning(sub)
    _add_run_and_status(sub)
    _add_repairs(sub)
    return parser


def _add_provisioning(sub: argparse._SubParsersAction) -> None:
    prov = sub.add_parser(
        "provision",
        help="create the network CA and every hospital's bundle",
        description="Create OUT/_ca/ (keep it offline) and one bundle per hospital: "
        "OUT/<name>/node.toml, <name>.crt, <name>.key, ca.crt.",
    )
    ren = sub.add_parser(
        "renew",
        help="add or renew one hospital from the existing CA",
        description="New key and certificate for one hospital; rewrites its bundle and its "
        "neighbours' node.toml (their peer lists).",
    )
    for cmd in (prov, ren):
        cmd.add_argument("network", type=Path, help="the network description TOML")
        cmd.add_argument("--out", type=Path, required=True, help="folder of _ca/ and bundles")
        cmd.add_argument(
            "--valid-days",
            type=int,
            default=LEAF_VALID_DAYS,
            help=f"certificate lifetime in days (default {LEAF_VALID_DAYS})",
        )
    prov.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA: every hospital then needs its new bundle",
    )
    ren.add_argument("--hospital", required=True, help="hospital name from the network file")


def _add_run_and_status(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run this hospital's node until SIGTERM",
        description="Train on the site folder and swap with the neighbours until "
        "SIGTERM/Ctrl-C (or --max-steps); resumes from the newest good checkpoint; writes "
        "STATE_DIR/status.json every few seconds. Logs go to stderr.",
    )
    status = sub.add_parser(
        "status",
        help="health, step, peers and latest AUC of a node",
        description="Ask the node's own gRPC health service (with its own certificate) and "
        "read STATE_DIR/status.json and the results store; works whether or not the node "
        "runs. Exit status 3 when it is not running or not SERVING.",
    )
    for cmd in (run, status):
        cmd.add_argument("--config", type=Path, required=True, help="the bundle's node.toml")
        cmd.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one node.toml entry, e.g. training.batch_size=8 (repeatable)",
        )
    run.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop (run status 'finished') once the node's step count reaches N",
    )
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    add_privacy_arguments(run)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--timeout", type=float, default=3.0, help="health check timeout (s)")


def _add_repairs(sub: argparse._SubParsersAction) -> None:
    rev = sub.add_parser(
        "revoke",
        help="revoke a hospital's certificates (coordinator, needs the CA key)",
        description="Add every certificate issued to NAME (or the given serials) to the "
        "network's revocation list, signed with the CA key, and write it to OUT/_ca/crl.pem and "
        "every bundle's crl.pem. Hand each hospital its new crl.pem (public and signed: any "
        "channel will do): nodes re-read it within a call and refuse NAME from then on.",
    )
    rev.add_argument("hospital", nargs="?", help="the hospital whose certificates to revoke")
    rev.add_argument("--out", type=Path, required=True, help="folder of _ca/ and bundles")
    rev.add_argument("--reason", default="key-compromise", choices=sorted(REASONS))
    rev.add_argument(
        "--serial", action="append", metavar="HEX", help="revoke only this serial (repeatable)"
    )
    rev.add_argument(
        "--refresh", action="store_true", help="only re-sign the list with a new expiry date"
    )
    reset = sub.add_parser(
        "reset-edge",
        help="forget a neighbour's sequence numbers (stopped node only)",
        description="On a STOPPED node: forget the last sequence numbers accepted from PEER, "
        "in every checkpoint, so its next message is taken again (after `refused ...: stale` or "
        "`sequence_jump` that a restart does not cure). Refused while the node runs.",
    )
    reset.add_argument("--config", type=Path, required=True, help="the bundle's node.toml")
    reset.add_argument("--peer", required=True, help="the neighbour's name")
    reset.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")


def _provision(args: argparse.Namespace) -> int:
    network = load_network(args.network)
    if args.command == "provision":
        paths = provision(network, args.out, valid_days=args.valid_days, force=args.force)
    else:
        paths = renew(network, args.out, args.hospital, valid_days=args.valid_days)
    for path in paths:
        print(path)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if args.refresh:
        for path in refresh_revocations(args.out):
            print(path)
        return 0
    if not args.hospital:
        raise ProvisionError("name the hospital to revoke (or use --refresh)")
    try:
        serials = [int(s, 16) for s in args.serial] if args.serial else None
    except ValueError as exc:
        raise ProvisionError(f"--serial takes hexadecimal serial numbers: {exc}") from exc
    done = revoke(args.out, args.hospital, serials=serials, reason=args.reason)
    print(
        f"revoked {len(done.serials)} certificate(s) of {done.hospital} "
        f"({', '.join(f'{s:x}' for s in done.serials)}); revocation list number {done.number}:"
    )
    for path in done.written:
        print(path)
    print("hand every hospital its new crl.pem (nodes re-read it, no restart); "
          f"then `renew` {done.hospital} if it stays in the network")  # fmt: skip
    return 0


def _reset_edge(args: argparse.Namespace) -> int:
    from hospital_node.node.maintenance import reset_edge  # imports torch: only here

    config = load_node_config(args.config, parse_overrides(args.set))
    try:
        resets = reset_edge(config, args.peer)
    except NodeStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for reset in resets:
        print(f"{reset.checkpoint}: forgot {args.peer}'s last sequence "
              f"{reset.swap_sequence} (swap), {reset.model_sequence} (model)")  # fmt: skip
    if not resets:
        print(f"no checkpoint held a sequence number of {args.peer}: nothing to reset")
    return 0


def _run(args: argparse.Namespace) -> int:
    # torch, MONAI and pydicom load only for `run`: `status` stays quick.
    from hospital_node.data.site import SiteDataError
    from hospital_node.devices import DeviceError, resolve_device
    from hospital_node.node.runtime import HospitalNode, NodeError
    from hospital_node.store.writer import StoreError

    overrides = deep_merge(parse_overrides(args.set), privacy_overrides(args))
    config = load_node_config(args.config, overrides)
    try:  # before the site is read: a node asked for a GPU it lacks stops at once
        resolve_device(config.training.device, precision=config.training.precision)
    except DeviceError as exc:
        log.error("%s: %s", config.name, exc)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping after the current step", signal.Signals(signum).name)
        stop.set()

    try:
        node = HospitalNode(config=config, stop_event=stop)
    except NodeError as exc:
        log.error("%s: %s", config.name, exc)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    outcome, code = "failed", 1
    try:
        node.initialize()
        node.run(max_steps=args.max_steps)
        outcome, code = ("interrupted" if stop.is_set() else "finished"), 0
    except (NodeError, SiteDataError, StoreError, TlsConfigError, NodeStateError, OSError) as exc:
        log.error("%s: %s", config.name, exc)
        code = 2
    finally:
        node.shutdown(status=outcome)
    return code


def _status(args: argparse.Namespace) -> int:
    config = load_node_config(args.config, parse_overrides(args.set))
    report: dict[str, Any] = collect_status(config, timeout=args.timeout)
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True, default=str))
    else:
        print(format_status(report, now=time.time()))
    return 0 if report["health"] == "SERVING" else 3


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (see the epilog)."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        level = getattr(logging, str(args.log_level).upper(), logging.INFO)
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    else:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in ("provision", "renew"):
            return _provision(args)
        if args.command == "run":
            return _run(args)
        if args.command == "revoke":
            return _revoke(args)
        if args.command == "reset-edge":
            return _reset_edge(args)
        return _status(args)
    except (NetworkError, ProvisionError, PkiError, NodeConfigError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
