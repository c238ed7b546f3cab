"""Results store, write side: one SQLite file, WAL mode, one short transaction per call."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from hospital_node.evaluation.records import Evaluation, RocCurve
from hospital_node.store.migrations import migrate
from hospital_node.store.reader import StoreReader
from hospital_node.store.review_writes import ReviewWrites
from hospital_node.store.schema import (
    BUSY_TIMEOUT_S,
    RUN_KINDS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    SITE_ROLES,
    STEP_TABLES,
    TEST_SETS,
    PrivacyStatus,
    RunInfo,
    SiteInfo,
    StoreError,
    check_choice,
    check_name,
    check_schema,
    check_topology,
    create_schema,
    finite_or_none,
    retry_locked,
    to_json,
    utc_now,
)

__all__ = [
    "SCHEMA_VERSION",
    "PrivacyStatus",
    "ResultsStore",
    "RunInfo",
    "SiteInfo",
    "StoreError",
    "StoreReader",
]

logger = logging.getLogger(__name__)

SYNCHRONOUS_MODES = ("NORMAL", "FULL")


def _insert(conn: sqlite3.Connection, table: str, rows: Sequence[tuple]) -> None:
    """INSERT OR REPLACE whole rows (columns in table order); `table` is one of ours."""
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)


def _key(run_id: str, method: str, site: str) -> tuple[str, str, str]:
    return run_id, check_name("method", method), check_name("site", site)


class ResultsStore(ReviewWrites, StoreReader):
    """Writer (and reader) of one results store; thread-safe: one connection behind a lock.

    Every write method is one short `BEGIN IMMEDIATE ... COMMIT` transaction, so a process
    killed at any point leaves every completed call stored and the file consistent.
    """

    @classmethod
    def open(
        cls, path: str | Path, *, create: bool = True, synchronous: str = "NORMAL"
    ) -> ResultsStore:
        """Open (or create) a store for writing; WAL mode, so readers never block the writer.

        synchronous='NORMAL' (default) survives any process crash; 'FULL' also survives a
        power cut or OS crash at the cost of one fsync per call (docs/results.md).
        """
        path = Path(path)
        check_choice("synchronous", synchronous, SYNCHRONOUS_MODES)
        if path.exists() and not path.is_file():
            raise StoreError(f"{path} is not a file; give the path of the .sqlite results store")
        if not path.exists():
            if not create:
                raise StoreError(f"no results store at {path}; open it with create=True")
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            exists = retry_locked(
                lambda: check_schema(conn, path, allow_empty=True),
                what=f"open {path}",
                retries=5,
                sleep_s=0.05,
            )
            if not exists and not create:
                raise StoreError(f"{path} is an empty database; open it with create=True")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot use WAL mode (got {mode}); use a local disk")
            if not exists:
                create_schema(conn, path)
            elif exists < SCHEMA_VERSION:
                migrate(conn, path)  # an older store: add what this version needs
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        logger.info("results store %s open for writing (synchronous=%s)", path, synchronous)
        return cls(conn, path)

    @contextmanager
    def _write(self, run_id: str | None, what: str) -> Iterator[sqlite3.Connection]:
        """One short write transaction; touches runs.updated_at (a liveness heartbeat)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{what}: cannot start a write on {self._path}: {exc}") from exc
            try:
                if run_id is not None:
                    cursor = self._conn.execute(
                        "UPDATE runs SET updated_at = ? WHERE run_id = ?", (utc_now(), run_id)
                    )
                    if cursor.rowcount == 0:
                        raise StoreError(f"{what}: no run {run_id!r}; call start_run first")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{what} failed on {self._path}: {exc}") from exc
                raise

    def start_run(
        self,
        run_id: str,
        *,
        kind: str,
        config: Mapping[str, Any],
        topology: Mapping[str, Any],
        privacy: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a new run (status 'running'); refuses a run_id already in the store."""
        check_topology(topology)
        now = utc_now()
        row = (
            check_name("run_id", run_id),
            check_choice("kind", kind, RUN_KINDS),
            now,
            now,
            "running",
            to_json("config", config),
            to_json("topology", topology),
            None if privacy is None else to_json("privacy", privacy),
        )
        with self._write(None, "start_run") as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise StoreError(
                    f"run {run_id!r} already exists in {self._path}; "
                    "call resume_run to continue it or pick a new run_id"
                )
            conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        logger.info("run %s started (%s)", run_id, kind)

    def resume_run(self, run_id: str) -> dict[str, Any]:
        """Mark an existing run 'running' again and return the config it was started with."""
        self.set_run_status(run_id, "running")
        logger.info("run %s resumed", run_id)
        return self.run_config(run_id)

    def set_run_status(self, run_id: str, status: str) -> None:
        """'running' | 'finished' | 'interrupted' | 'failed'."""
        check_choice("status", status, RUN_STATUSES)
        with self._write(run_id, "set_run_status") as conn:
            conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    def add_sites(self, run_id: str, sites: Sequence[SiteInfo]) -> None:
        """Insert or replace the sites of a run (safe to repeat on resume)."""
        rows = [
            (run_id, check_name("site", s.site), check_choice("role", s.role, SITE_ROLES),
             int(s.n_train), int(s.n_val), int(s.n_test),
             to_json("train_positives", {k: int(v) for k, v in s.train_positives.items()}))
            for s in sites
        ]  # fmt: skip
        with self._write(run_id, "add_sites") as conn:
            _insert(conn, "sites", rows)

    def log_metrics(
        self,
        run_id: str,
        method: str,
        site: str,
        step: int,
        values: Mapping[str, float | None],
        *,
        wall_time: float | None = None,
    ) -> None:
        """Scalars at one step (NaN/inf/None stored as NULL); re-logging a name overwrites it."""
        key = _key(run_id, method, site)
        now = time.time() if wall_time is None else float(wall_time)
        rows = [
            (*key, int(step), check_name("metric name", name), finite_or_none(value), now)
            for name, value in values.items()
        ]
        with self._write(run_id, "log_metrics") as conn:
            _insert(conn, "metrics", rows)

    def log_evaluation(
        self,
        run_id: str,
        method: str,
        site: str,
        step: int,
        test_set: str,
        evaluation: Evaluation,
        *,
        is_final: bool = False,
    ) -> None:
        """Per-finding AUC rows plus the metric 'mean_auc_<test_set>', in one transaction."""
        key = _key(run_id, method, site)
        check_choice("test_set", test_set, TEST_SETS)
        e = evaluation
        cis = e.ci or (None,) * len(e.findings)
        rows = [
            (*key, int(step), test_set, check_name("finding", name), finite_or_none(auc),
             ci[0] if ci else None, ci[1] if ci else None, e.ci_level if ci else None,
             int(n_pos), int(n_neg), int(is_final))
            for name, auc, ci, n_pos, n_neg in zip(
                e.findings, e.auc, cis, e.n_pos, e.n_neg, strict=True
            )
        ]  # fmt: skip
        mean = (*key, int(step), f"mean_auc_{test_set}", finite_or_none(e.mean_auc), time.time())
        with self._write(run_id, "log_evaluation") as conn:
            _insert(conn, "auc", rows)
            _insert(conn, "metrics", [mean])

    def log_roc(
        self,
        run_id: str,
        method: str,
        site: str,
        step: int,
        test_set: str,
        curves: Mapping[str, RocCurve | None],
    ) -> None:
        """Final ROC curves keyed by finding (None skipped); +inf thresholds stored as null."""
        key = _key(run_id, method, site)
        check_choice("test_set", test_set, TEST_SETS)

        def encode(values: Sequence[float]) -> str:
            return json.dumps([finite_or_none(v) for v in values])

        rows = [
            (*key, test_set, check_name("finding", finding), int(step), encode(c.fpr),
             encode(c.tpr), encode(c.thresholds), finite_or_none(c.threshold), c.sensitivity,
             c.specificity)
            for finding, c in curves.items()
            if c is not None
        ]  # fmt: skip
        with self._write(run_id, "log_roc") as conn:
            _insert(conn, "roc", rows)

    def upsert_exchange(
        self,
        run_id: str,
        method: str,
        src: str,
        dst: str,
        step: int,
        *,
        messages: int = 1,
        n_bytes: int = 0,
        rejected: int = 0,
    ) -> None:
        """Add deltas to the cumulative counters of edge src -> dst as of `step`.

        Rows are cumulative snapshots per step (so truncate_after can roll them back); a
        delta logged at an older step is also added to any newer snapshot.
        """
        key = (run_id, check_name("method", method), check_name("src", src),
               check_name("dst", dst))  # fmt: skip
        deltas = (int(messages), int(n_bytes), int(rejected))
        with self._write(run_id, "upsert_exchange") as conn:
            base = conn.execute(
                "SELECT messages, bytes, rejected FROM exchanges WHERE run_id = ? AND method = ? "
                "AND src = ? AND dst = ? AND step <= ? ORDER BY step DESC LIMIT 1",
                (*key, int(step)),
            ).fetchone() or (0, 0, 0)
            totals = tuple(b + d for b, d in zip(base, deltas, strict=True))
            _insert(conn, "exchanges", [(*key, int(step), *totals, utc_now())])
            conn.execute(
                "UPDATE exchanges SET messages = messages + ?, bytes = bytes + ?, "
                "rejected = rejected + ? WHERE run_id = ? AND method = ? AND src = ? AND dst = ? "
                "AND step > ?",
                (*deltas, *key, int(step)),
            )

    def set_exchange(
        self,
        run_id: str,
        method: str,
        src: str,
        dst: str,
        step: int,
        *,
        messages: int,
        n_bytes: int,
        rejected: int = 0,
    ) -> None:
        """Record absolute cumulative counters of edge src -> dst at `step` (transport stats)."""
        row = (run_id, check_name("method", method), check_name("src", src),
               check_name("dst", dst), int(step), int(messages), int(n_bytes), int(rejected),
               utc_now())  # fmt: skip
        with self._write(run_id, "set_exchange") as conn:
            _insert(conn, "exchanges", [row])

    def set_node_status(
        self, run_id: str, method: str, site: str, step: int, state: str, detail: str = ""
    ) -> None:
        """Current state of one node, e.g. 'training', 'stopped_sending', 'finished'."""
        row = (*_key(run_id, method, site), int(step), check_name("state", state), str(detail),
               utc_now())  # fmt: skip
        with self._write(run_id, "set_node_status") as conn:
            _insert(conn, "node_status", [row])

    def set_privacy(self, run_id: str, method: str, site: str, status: PrivacyStatus) -> None:
        """Overwrite the privacy spent by one (method, site)."""
        s = status
        row = (*_key(run_id, method, site), check_name("privacy mode", s.mode),
               finite_or_none(s.epsilon), finite_or_none(s.delta), finite_or_none(s.budget),
               finite_or_none(s.noise_multiplier), finite_or_none(s.clip), int(s.releases),
               int(bool(s.exhausted)), str(s.accountant), utc_now())  # fmt: skip
        with self._write(run_id, "set_privacy") as conn:
            _insert(conn, "privacy", [row])

    def save_model(
        self,
        run_id: str,
        method: str,
        site: str,
        step: int,
        model_config: Mapping[str, Any],
        state: Mapping[str, torch.Tensor],
    ) -> None:
        """Store (replace) the model of one (method, site) as safetensors bytes with a sha256."""
        key = _key(run_id, method, site)
        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}
        blob = save_safetensors(tensors, metadata={"format": "pt"})
        row = (*key, int(step), to_json("model_config", model_config), blob,
               hashlib.sha256(blob).hexdigest(), utc_now())  # fmt: skip
        with self._write(run_id, "save_model") as conn:
            _insert(conn, "models", [row])
        logger.info("model %s/%s/%s step %d saved (%d bytes)", *key, step, len(blob))

    def truncate_after(self, run_id: str, method: str | None, step: int) -> int:
        """Delete rows with step > `step` (one method, or all when None); returns rows deleted.

        For resume from a checkpoint taken at `step`: the resumed run logs those steps again
        and nothing is counted twice. node_status and privacy hold current state and are
        overwritten by the resumed run.
        """
        where = "run_id = ? AND step > ?" + ("" if method is None else " AND method = ?")
        params = (run_id, int(step)) + (() if method is None else (method,))
        deleted = 0
        with self._write(run_id, "truncate_after") as conn:
            for table in STEP_TABLES:
                deleted += conn.execute(f"DELETE FROM {table} WHERE {where}", params).rowcount
        logger.info(
            "run %s: %d rows after step %d removed (method %s)", run_id, deleted, step, method
        )
        return deleted
