"""`hospital-node status`: health check, STATE_DIR/status.json and the results store, merged."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consensus.transport.tls import TlsConfigError, channel_credentials, load_tls
from hospital_node.node.config import NodeConfig
from hospital_node.node.state import NodeStateError, read_json

NOT_RUNNING = "not running"


def check_health(config: NodeConfig, *, timeout: float = 3.0) -> str:
    """SERVING / NOT_SERVING from the node's grpc.health.v1 service, reached with the node's own
    certificate (the server only admits the network CA's certificates); 'not running' when
    nothing answers; 'error: ...' when the check itself cannot be made."""
    paths = config.paths
    try:
        tls = load_tls(ca_cert=paths.ca_cert, cert=paths.cert, key=paths.key)
    except TlsConfigError as exc:
        return f"error: {exc}"
    options = [("grpc.ssl_target_name_override", config.name)]
    channel = grpc.secure_channel(config.listen.local_address, channel_credentials(tls), options)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return NOT_RUNNING
        return f"error: {err.code().name}: {err.details()}"
    finally:
        channel.close()


def read_store(path: Path, run_id: str) -> dict[str, Any] | None:
    """Run status, node status, latest local AUC and exchange totals (read-only); None if absent."""
    if not path.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return None
    try:
        run = con.execute("SELECT status, updated_at FROM runs WHERE run_id = ?", (run_id,))
        row = run.fetchone()
        node = con.execute(
            "SELECT step, state, detail, updated_at FROM node_status WHERE run_id = ?", (run_id,)
        ).fetchone()
        auc = con.execute(
            "SELECT step, finding, auc FROM auc WHERE run_id = ? AND test_set = 'local' AND "
            "step = (SELECT MAX(step) FROM auc WHERE run_id = ? AND test_set = 'local')",
            (run_id, run_id),
        ).fetchall()
        exchanges = con.execute(
            "SELECT src, dst, MAX(step), messages, bytes, rejected FROM exchanges "
            "WHERE run_id = ? GROUP BY src, dst ORDER BY src, dst",
            (run_id,),
        ).fetchall()
        privacy = con.execute(
            "SELECT mode, epsilon, delta, budget, releases, exhausted, accountant FROM privacy "
            "WHERE run_id = ? AND site = ?",
            (run_id, run_id),
        ).fetchone()
    except sqlite3.Error as exc:
        return {"path": str(path), "error": str(exc)}
    finally:
        con.close()
    return {
        "path": str(path),
        "run_status": row[0] if row else None,
        "updated_at": row[1] if row else None,
        "node_status": dict(zip(("step", "state", "detail", "updated_at"), node, strict=True))
        if node
        else None,
        "latest_auc": {"step": auc[0][0], "per_finding": {f: a for _, f, a in auc}}
        if auc
        else None,
        "exchanges": [
            dict(zip(("src", "dst", "step", "messages", "bytes", "rejected"), e, strict=True))
            for e in exchanges
        ],
        "privacy": dict(zip(_PRIVACY_COLUMNS, privacy, strict=True)) if privacy else None,
    }


_PRIVACY_COLUMNS = ("mode", "epsilon", "delta", "budget", "releases", "exhausted", "accountant")


def _peer_summary(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    client = entry.get("client") or {}
    times = [t for t in (entry.get("last_received_at"), client.get("last_success_at")) if t]
    keys = (
        "address",
        "initiator",
        "applied",
        "messages_sent",
        "messages_received",
        "bytes_sent",
        "bytes_received",
        "rejected",
        "received_this_boot",
        "models_served",
        "models_refused",
        "messages_withheld",
        "withheld_received",
    )
    summary = {k: entry.get(k) for k in keys}
    summary.update(
        last_swap_at=max(times) if times else None,
        failures=client.get("total_failures", 0),
        consecutive_failures=client.get("consecutive_failures", 0),
        last_error=client.get("last_error"),
        next_attempt_at=client.get("next_attempt_at"),
    )
    return summary


def collect_status(config: NodeConfig, *, timeout: float = 3.0) -> dict[str, Any]:
    """The document `hospital-node status --json` prints (fields: docs/hospital-it.md)."""
    health = check_health(config, timeout=timeout)
    try:
        live = read_json(config.paths.status_file) or {}
        status_error = None
    except NodeStateError as exc:
        live, status_error = {}, str(exc)
    store = read_store(config.paths.results_store, config.name)
    updated = live.get("updated_at")
    server = live.get("server", {})
    latest = live.get("latest_eval") or (store or {}).get("latest_auc")
    return {
        "node": config.name,
        "network": config.network,
        "address": config.listen.local_address,
        "health": health,
        "state": live.get("state", "never started" if not live else None),
        "stale": bool(live) and live.get("state") != "stopped" and health == NOT_RUNNING,
        "status_file": str(config.paths.status_file),
        "status_error": status_error,
        "status_age_s": None if updated is None else round(_now() - float(updated), 1),
        **{
            k: live.get(k)
            for k in (
                "pid",
                "method",
                "step",
                "boot_epoch",
                "resumed_from_step",
                "joined_from",
                "train_loss",
                "images_per_second",
                "last_checkpoint",
                "checkpoint_failing",
            )
        },
        "latest_auc": latest,
        "peers": {p: _peer_summary(p, e) for p, e in sorted(live.get("peers", {}).items())},
        "gate": live.get("gate", {}),
        "refused_calls": {
            k.removeprefix("refused."): v for k, v in server.items() if k.startswith("refused.")
        },
        "privacy": live.get("privacy") or (store or {}).get("privacy") or {"mode": "off"},
        "metrics_sharing": live.get("metrics_sharing"),  # None: [metrics] share is off
        "store": store,
    }


def _privacy_line(privacy: dict[str, Any]) -> str:
    """One line on the spent epsilon: what it protects, how much of the budget is used."""
    mode = privacy.get("mode", "off")
    if mode in ("off", "none"):
        return f"  privacy: {mode} (no epsilon)"
    if privacy.get("epsilon") is None:
        return f"  privacy: {mode}"
    budget = privacy.get("epsilon_budget", privacy.get("target_epsilon", privacy.get("budget")))
    limit = "no limit" if budget is None else f"budget {budget:g}"
    unit = "whole site" if mode == "exchange" else "one image"
    line = (
        f"  privacy: {mode} ({unit}), epsilon {privacy['epsilon']:.3f} ({limit}) at delta "
        f"{privacy.get('delta', 0):g}"
    )
    if privacy.get("stopped_sending") or (mode == "exchange" and privacy.get("exhausted")):
        line += "; BUDGET SPENT: sends nothing to its neighbours, still trains and receives"
    elif privacy.get("budget_spent"):
        line += "; BUDGET SPENT: no more training steps, still answers swaps"
    return line


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def _ago(when: float | None, now: float) -> str:
    return "never" if not when else f"{now - float(when):.0f} s ago"


def format_status(report: dict[str, Any], *, now: float) -> str:
    """A few human lines for the terminal."""
    lines = [
        f"node {report['node']} ({report['network']}) at {report['address']}: {report['health']}",
        f"  state {report['state']}{' (stale: the process is gone)' if report['stale'] else ''}"
        f", step {report['step']}, boot epoch {report['boot_epoch']}, "
        f"status.json {report['status_age_s']} s old",
    ]
    checkpoint = report.get("last_checkpoint")
    if checkpoint:
        lines.append(f"  last checkpoint: step {checkpoint['step']}, {_ago(checkpoint['at'], now)}")
    failing = report.get("checkpoint_failing")
    if failing:
        lines.append(f"  CHECKPOINTS FAILING since step {failing['since_step']} "
                     f"({failing['failures']} failed): {failing['error']}")  # fmt: skip
    auc = report.get("latest_auc")
    if auc:
        values = {f: a for f, a in auc.get("per_finding", {}).items() if a is not None}
        mean = sum(values.values()) / len(values) if values else None
        text = "n/a" if mean is None else f"{mean:.3f} over {len(values)} findings"
        lines.append(f"  latest local-test AUC (step {auc['step']}): mean {text}")
    for peer, p in report["peers"].items():
        role = "we start swaps" if p["initiator"] else "they start swaps"
        lines.append(
            f"  peer {peer} {p['address']} ({role}): last swap {_ago(p['last_swap_at'], now)}, "
            f"{p['applied']} applied, {p['failures']} failed calls"
            + (f", last error: {p['last_error']}" if p.get("last_error") else "")
        )
    lines.append(_privacy_line(report.get("privacy") or {}))
    sharing = report.get("metrics_sharing")
    if sharing is not None:
        known = ", ".join(f"{o} (step {k['step']})" for o, k in sorted(sharing["known"].items()))
        lines.append(f"  metrics sharing: on; summaries of {known or 'no hospital yet'}")
    refused = {**report["gate"].get("rejected", {}), **report["refused_calls"]}
    if refused:
        lines.append("  refused: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    return "\n".join(lines)
