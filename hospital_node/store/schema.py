"""Results-store schema (SQLite DDL, version), its records, and checks shared by both sides."""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: calibration, subgroup_auc, shared_metrics (migrations.py)
OLDEST_READABLE = 1  # readers open stores from this version on; writers migrate them
BUSY_TIMEOUT_S = 5.0  # how long one statement waits for another process's write lock
RUN_KINDS = ("simulation", "node")
RUN_STATUSES = ("running", "finished", "interrupted", "failed")
SITE_ROLES = ("hospital", "reference")
TEST_SETS = ("common", "local")
# Display order of the methods (the simulation's and the nodes'); others sort after them.
METHODS = (
    "centralized", "local", "gossip", "gradient-tracking", "fedavg", "ecl-pdmm", "ecl-admm",
    "ecl-isvr-pdmm", "ecl-isvr-admm",
)  # fmt: skip
ALL_SITES = "all"  # site of the centralized model and of network-wide metrics
_LOCKED_MESSAGES = ("database is locked", "database is busy", "database table is locked")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")
_T = TypeVar("_T")

# Every table but schema_info and runs is keyed by run_id and dies with its run.
_FK = "FOREIGN KEY (run_id) REFERENCES runs (run_id) ON DELETE CASCADE"
_KEY = "run_id TEXT NOT NULL, method TEXT NOT NULL, site TEXT NOT NULL"
DDL_V1 = (
    "CREATE TABLE schema_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE runs (run_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN {RUN_KINDS}),
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN {RUN_STATUSES}),
        config_json TEXT NOT NULL, topology_json TEXT NOT NULL, privacy_json TEXT)""",
    f"""CREATE TABLE sites (run_id TEXT NOT NULL, site TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN {SITE_ROLES}),
        n_train INTEGER NOT NULL, n_val INTEGER NOT NULL, n_test INTEGER NOT NULL,
        train_positives_json TEXT NOT NULL, PRIMARY KEY (run_id, site), {_FK})""",
    f"""CREATE TABLE metrics ({_KEY}, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
        wall_time REAL NOT NULL, PRIMARY KEY (run_id, method, site, step, name), {_FK})""",
    f"""CREATE TABLE auc ({_KEY}, step INTEGER NOT NULL,
        test_set TEXT NOT NULL CHECK (test_set IN {TEST_SETS}), finding TEXT NOT NULL,
        auc REAL, ci_low REAL, ci_high REAL, ci_level REAL,
        n_pos INTEGER NOT NULL, n_neg INTEGER NOT NULL,
        is_final INTEGER NOT NULL CHECK (is_final IN (0, 1)),
        PRIMARY KEY (run_id, method, site, step, test_set, finding), {_FK})""",
    f"""CREATE TABLE roc ({_KEY}, test_set TEXT NOT NULL CHECK (test_set IN {TEST_SETS}),
        finding TEXT NOT NULL, step INTEGER NOT NULL, fpr_json TEXT NOT NULL,
        tpr_json TEXT NOT NULL, thresholds_json TEXT NOT NULL, threshold REAL,
        sensitivity REAL NOT NULL, specificity REAL NOT NULL,
        PRIMARY KEY (run_id, method, site, test_set, finding), {_FK})""",
    f"""CREATE TABLE exchanges (run_id TEXT NOT NULL, method TEXT NOT NULL, src TEXT NOT NULL,
        dst TEXT NOT NULL, step INTEGER NOT NULL, messages INTEGER NOT NULL,
        bytes INTEGER NOT NULL, rejected INTEGER NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (run_id, method, src, dst, step), {_FK})""",
    f"""CREATE TABLE node_status ({_KEY}, step INTEGER NOT NULL, state TEXT NOT NULL,
        detail TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (run_id, method, site), {_FK})""",
    f"""CREATE TABLE privacy ({_KEY}, mode TEXT NOT NULL, epsilon REAL, delta REAL,
        budget REAL, noise_multiplier REAL, clip REAL, releases INTEGER NOT NULL,
        exhausted INTEGER NOT NULL CHECK (exhausted IN (0, 1)), accountant TEXT NOT NULL,
        updated_at TEXT NOT NULL, PRIMARY KEY (run_id, method, site), {_FK})""",
    f"""CREATE TABLE models ({_KEY}, step INTEGER NOT NULL, model_config_json TEXT NOT NULL,
        weights BLOB NOT NULL, sha256 TEXT NOT NULL, saved_at TEXT NOT NULL,
        PRIMARY KEY (run_id, method, site), {_FK})""",
)
# Version 2: the latest reliability diagram per finding, subgroup AUCs (latest evaluation),
# and the per-finding summaries other hospitals shared (latest per origin; step and boot
# epoch are the origin's, so truncate_after leaves them alone).
DDL_V2 = (
    f"""CREATE TABLE calibration ({_KEY}, test_set TEXT NOT NULL CHECK (test_set IN {TEST_SETS}),
        finding TEXT NOT NULL, step INTEGER NOT NULL, bins_json TEXT NOT NULL, ece REAL,
        n_images INTEGER NOT NULL, n_pos INTEGER NOT NULL,
        PRIMARY KEY (run_id, method, site, test_set, finding), {_FK})""",
    f"""CREATE TABLE subgroup_auc ({_KEY},
        test_set TEXT NOT NULL CHECK (test_set IN {TEST_SETS}), attribute TEXT NOT NULL,
        subgroup TEXT NOT NULL, finding TEXT NOT NULL, step INTEGER NOT NULL, auc REAL,
        ci_low REAL, ci_high REAL, ci_level REAL, n_pos INTEGER NOT NULL,
        n_neg INTEGER NOT NULL, n_images INTEGER NOT NULL, n_patients INTEGER NOT NULL,
        PRIMARY KEY (run_id, method, site, test_set, attribute, subgroup, finding), {_FK})""",
    f"""CREATE TABLE shared_metrics (run_id TEXT NOT NULL, origin TEXT NOT NULL,
        test_set TEXT NOT NULL CHECK (test_set IN {TEST_SETS}), finding TEXT NOT NULL,
        method TEXT NOT NULL, boot_epoch INTEGER NOT NULL, step INTEGER NOT NULL, auc REAL,
        ci_low REAL, ci_high REAL, ci_level REAL, n_pos INTEGER, n_neg INTEGER,
        suppressed INTEGER NOT NULL CHECK (suppressed IN (0, 1)),
        min_positives INTEGER NOT NULL, n_images INTEGER NOT NULL,
        created_at TEXT NOT NULL, received_at TEXT NOT NULL, via TEXT NOT NULL,
        PRIMARY KEY (run_id, origin, test_set, finding), {_FK})""",
)
DDL = DDL_V1 + DDL_V2
# Tables whose rows carry the step they describe; truncate_after removes the newer ones.
STEP_TABLES = ("metrics", "auc", "roc", "exchanges", "models", "calibration", "subgroup_auc")


class StoreError(RuntimeError):
    """The results store cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class RunInfo:
    """One row of `runs`, JSON columns decoded."""

    run_id: str
    kind: str
    status: str
    created_at: str
    updated_at: str
    config: dict[str, Any]
    topology: dict[str, Any]
    privacy: dict[str, Any] | None


@dataclass(frozen=True)
class SiteInfo:
    """One site of a run: split sizes and positives per finding in its train split."""

    site: str
    n_train: int
    n_val: int
    n_test: int
    train_positives: Mapping[str, int] = field(default_factory=dict)
    role: str = "hospital"  # 'reference' for the centralized pool (site 'all')


@dataclass(frozen=True)
class PrivacyStatus:
    """Privacy spent by one (method, site); epsilon/delta are the accountant's current totals."""

    mode: str  # PrivacyConfig.mode: 'exchange' (site level) or 'dpsgd' (record level)
    epsilon: float | None
    delta: float | None
    releases: int  # noisy releases (messages or steps) accounted so far
    exhausted: bool  # True once the budget is spent and the node stopped sending
    accountant: str = "rdp"
    budget: float | None = None  # target epsilon; None = unlimited
    noise_multiplier: float | None = None
    clip: float | None = None


def utc_now() -> str:
    """ISO-8601 UTC timestamp with milliseconds, e.g. 2025-01-31T12:00:00.123+00:00."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_name(what: str, value: str) -> str:
    """Run ids, methods, sites, findings, metric names: 1-128 printable characters, no spaces."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise StoreError(
            f"{what} {value!r} is not a valid name: use 1-128 letters, digits and _ . : + -"
        )
    return value


def check_choice(what: str, value: str, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`, else StoreError listing them."""
    if value not in choices:
        raise StoreError(f"{what} {value!r} is not one of {tuple(choices)}")
    return value


def to_json(what: str, value: Any) -> str:
    """Strict JSON (no NaN/inf); tells the caller how to fix what cannot be encoded."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"{what} must be JSON-serialisable without NaN/inf (use dataclasses.asdict, str "
            f"for paths): {exc}"
        ) from exc


def finite_or_none(value: float | None) -> float | None:
    """float(value), or None for None / NaN / inf (stored as SQL NULL)."""
    return None if value is None or not math.isfinite(value) else float(value)


def check_topology(topology: Mapping[str, Any]) -> None:
    """{'kind': ..., 'nodes': [...], 'edges': [[a, b], ...]} with edges between listed nodes."""
    nodes = topology.get("nodes")
    edges = topology.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        raise StoreError("topology needs 'nodes' (list of sites) and 'edges' (list of [a, b])")
    for edge in edges:
        if not (isinstance(edge, list | tuple) and len(edge) == 2 and set(edge) <= set(nodes)):
            raise StoreError(f"topology edge {edge!r} must be [a, b] with a and b in 'nodes'")


def is_locked_error(exc: sqlite3.Error) -> bool:
    """True for SQLite's 'another connection holds the lock' errors (worth a retry)."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        m in str(exc).lower() for m in _LOCKED_MESSAGES
    )


def retry_locked(action: Callable[[], _T], *, what: str, retries: int, sleep_s: float) -> _T:
    """Run `action`, retrying 'database is locked' with doubling sleeps, then StoreError."""
    for attempt in range(retries + 1):
        try:
            return action()
        except sqlite3.Error as exc:
            if not is_locked_error(exc):
                raise
            if attempt == retries:
                raise StoreError(
                    f"{what}: the database stayed locked after {retries + 1} tries ({exc}); "
                    "another process holds an exclusive lock - wait for it or stop it, then retry"
                ) from exc
            logger.debug("%s: locked, retry %d", what, attempt + 1)
            time.sleep(sleep_s * (2**attempt))
    raise StoreError(f"{what}: retries must be >= 0, got {retries}")


def check_schema(conn: sqlite3.Connection, path: Path, *, allow_empty: bool) -> int:
    """The store's schema version (0: an empty database), if this software can use it.

    Versions from OLDEST_READABLE up to SCHEMA_VERSION pass: readers read what is there (the
    newer tables are simply empty), writers migrate (`migrations.migrate`).
    """
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        if is_locked_error(exc):
            raise
        raise StoreError(
            f"{path} is not a results store (SQLite says: {exc}); pass the .sqlite file "
            "that ecl-sim or hospital-node wrote"
        ) from exc
    if not tables:
        if allow_empty:
            return 0
        raise StoreError(f"{path} is an empty database: no run has written results to it yet")
    if "schema_info" not in tables:
        raise StoreError(f"{path} is an SQLite database but not a results store (no schema_info)")
    row = conn.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row and str(row[0]).isdigit() else 0
    if version < OLDEST_READABLE:
        raise StoreError(
            f"{path} has results-store schema version {version}, older than {OLDEST_READABLE}; "
            "this version cannot read it - re-run the experiment into a new store, or open it "
            "with the release that wrote it (docs/results.md, 'Schema versions')"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has results-store schema version {version}, newer than {SCHEMA_VERSION} "
            "which this software understands; upgrade ecl-hospitals to read it"
        )
    return version


def create_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create every table and the version row in one transaction (unless a racing writer did)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not check_schema(conn, path, allow_empty=True):
            for statement in DDL:
                conn.execute(statement)
            try:
                created_by = f"ecl-hospitals {metadata.version('ecl-hospitals')}"
            except metadata.PackageNotFoundError:
                created_by = "ecl-hospitals (not installed)"
            conn.executemany(
                "INSERT INTO schema_info (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("created_by", created_by),
                    ("created_at", utc_now()),
                ],
            )
            logger.info("created results store %s (schema version %d)", path, SCHEMA_VERSION)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
