"""Read side of the results store (SQLite): connection handling, schema check and queries."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from data_tools.labels import FINDINGS
from hospital_node.evaluation.records import RocCurve
from hospital_node.store.review_reads import ReviewReads
from hospital_node.store.schema import (
    BUSY_TIMEOUT_S,
    RunInfo,
    StoreError,
    check_schema,
    retry_locked,
)

logger = logging.getLogger(__name__)

__all__ = ["RunInfo", "StoreError", "StoreReader"]


def _sort_findings(frame: pd.DataFrame) -> pd.DataFrame:
    """Order rows by the keys present, findings in FINDINGS (NIH) order, unknown names last."""
    if frame.empty:
        return frame.reset_index(drop=True)
    order = {name: i for i, name in enumerate(FINDINGS)}
    keys = [c for c in ("method", "site", "test_set", "step") if c in frame.columns]
    frame = frame.assign(_f=frame["finding"].map(order).fillna(len(order)))
    return frame.sort_values([*keys, "_f", "finding"]).drop(columns="_f").reset_index(drop=True)


class StoreReader(ReviewReads):
    """Queries on a results store; thread-safe (one connection, one lock)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._lock = threading.RLock()

    @classmethod
    def open_readonly(
        cls, path: str | Path, *, retries: int = 5, sleep_s: float = 0.05
    ) -> StoreReader:
        """Open an existing store read-only (file: URI, mode=ro) for the app and reports.

        Always returns a plain StoreReader (no write methods), also via ResultsStore.
        'database is locked' is retried `retries` times with doubling sleeps from `sleep_s`.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"no results store at {path}; run ecl-sim or hospital-node first")
        if path.stat().st_size == 0:
            raise StoreError(f"{path} is an empty file: no run has written results to it yet")
        uri = f"{path.resolve().as_uri()}?mode=ro"

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                uri, uri=True, timeout=0.0, isolation_level=None, check_same_thread=False
            )
            try:
                check_schema(conn, path, allow_empty=False)
            except BaseException:
                conn.close()
                raise
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            return conn

        try:
            conn = retry_locked(connect, what=f"open {path}", retries=retries, sleep_s=sleep_s)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {path} read-only: {exc}") from exc
        logger.debug("opened %s read-only", path)
        return StoreReader(conn, path)

    @property
    def path(self) -> Path:
        """The store's file."""
        return self._path

    def close(self) -> None:
        """Close the connection; the object cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _fetch(self, sql: str, params: Sequence[Any]) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of one query; a locked or damaged file becomes StoreError."""
        with self._lock:
            try:
                cursor = self._conn.execute(sql, tuple(params))
                return [d[0] for d in cursor.description], cursor.fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"reading {self._path} failed: {exc}") from exc

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """All rows of one query as dicts keyed by column name."""
        names, rows = self._fetch(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _frame(
        self, sql: str, params: Sequence[Any], float_cols: Sequence[str] = ()
    ) -> pd.DataFrame:
        """One query as a DataFrame; `float_cols` become float64 with NULL -> NaN."""
        names, rows = self._fetch(sql, params)
        frame = pd.DataFrame(rows, columns=names)
        for col in float_cols:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        return frame

    @staticmethod
    def _where(run_id: str, **filters: Any) -> tuple[str, list[Any]]:
        """WHERE clause for run_id plus any non-None equality filters (column names are ours)."""
        clauses, params = ["run_id = ?"], [run_id]
        for column, value in filters.items():
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return " AND ".join(clauses), params

    def schema_info(self) -> dict[str, str]:
        """schema_version, created_by, created_at as recorded in the file."""
        return {r["key"]: r["value"] for r in self._rows("SELECT key, value FROM schema_info")}

    def list_runs(self) -> pd.DataFrame:
        """All runs, newest first: run_id, kind, status, created_at, updated_at."""
        return self._frame(
            "SELECT run_id, kind, status, created_at, updated_at FROM runs "
            "ORDER BY created_at DESC, run_id",
            (),
        )

    def run_info(self, run_id: str) -> RunInfo:
        """The run's row with its config, topology and privacy settings decoded."""
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise StoreError(f"no run {run_id!r} in {self._path}; list_runs() shows what is there")
        row = rows[0]
        return RunInfo(
            run_id=row["run_id"],
            kind=row["kind"],
            status=row["status"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            config=json.loads(row["config_json"]),
            topology=json.loads(row["topology_json"]),
            privacy=json.loads(row["privacy_json"]) if row["privacy_json"] else None,
        )

    def run_config(self, run_id: str) -> dict[str, Any]:
        """The configuration the run was started with (as given to start_run)."""
        return self.run_info(run_id).config

    def sites(self, run_id: str) -> pd.DataFrame:
        """Sites with split sizes, plus one column per finding: positives in the train split."""
        frame = self._frame(
            "SELECT site, role, n_train, n_val, n_test, train_positives_json FROM sites "
            "WHERE run_id = ? ORDER BY site",
            (run_id,),
        )
        positives = [json.loads(v) for v in frame.pop("train_positives_json")]
        names = list(FINDINGS) + sorted({k for p in positives for k in p} - set(FINDINGS))
        for name in names:
            frame[name] = [p.get(name, 0) for p in positives]
        return frame

    def auc_history(
        self,
        run_id: str,
        *,
        method: str | None = None,
        site: str | None = None,
        test_set: str | None = "common",
        finding: str | None = None,
    ) -> pd.DataFrame:
        """Every logged evaluation (long format); unavailable AUCs and CIs are NaN."""
        where, params = self._where(
            run_id, method=method, site=site, test_set=test_set, finding=finding
        )
        frame = self._frame(
            "SELECT method, site, step, test_set, finding, auc, ci_low, ci_high, ci_level, "
            f"n_pos, n_neg, is_final FROM auc WHERE {where}",
            params,
            float_cols=("auc", "ci_low", "ci_high", "ci_level"),
        )
        return _sort_findings(frame)

    def final_auc(
        self, run_id: str, method: str | None = None, test_set: str = "common"
    ) -> pd.DataFrame:
        """The final evaluation per (method, site): the is_final rows with the highest step."""
        where, params = self._where(run_id, method=method, test_set=test_set)
        frame = self._frame(
            "SELECT a.method, a.site, a.step, a.test_set, a.finding, a.auc, a.ci_low, a.ci_high, "
            "a.ci_level, a.n_pos, a.n_neg FROM auc AS a JOIN (SELECT method, site, test_set, "
            f"MAX(step) AS step FROM auc WHERE {where} AND is_final = 1 "
            "GROUP BY method, site, test_set) AS f USING (method, site, test_set, step) "
            "WHERE a.run_id = ?",
            [*params, run_id],
            float_cols=("auc", "ci_low", "ci_high", "ci_level"),
        )
        return _sort_findings(frame)

    def metrics(
        self,
        run_id: str,
        names: Sequence[str] | None = None,
        *,
        method: str | None = None,
        site: str | None = None,
    ) -> pd.DataFrame:
        """Per-step scalars (long format): method, site, step, name, value, wall_time."""
        where, params = self._where(run_id, method=method, site=site)
        if names is not None:
            where += f" AND name IN ({', '.join('?' * len(names))})"
            params.extend(names)
        return self._frame(
            f"SELECT method, site, step, name, value, wall_time FROM metrics WHERE {where} "
            "ORDER BY method, site, name, step",
            params,
            float_cols=("value", "wall_time"),
        )

    def roc(
        self, run_id: str, method: str, site: str, test_set: str, finding: str
    ) -> RocCurve | None:
        """The stored final ROC curve, or None when none was stored (e.g. finding not available)."""
        rows = self._rows(
            "SELECT * FROM roc WHERE run_id = ? AND method = ? AND site = ? AND test_set = ? "
            "AND finding = ?",
            (run_id, method, site, test_set, finding),
        )
        if not rows:
            return None
        row = rows[0]
        thresholds = [float("inf") if t is None else t for t in json.loads(row["thresholds_json"])]
        return RocCurve(
            fpr=tuple(json.loads(row["fpr_json"])),
            tpr=tuple(json.loads(row["tpr_json"])),
            thresholds=tuple(thresholds),
            threshold=float("inf") if row["threshold"] is None else row["threshold"],
            sensitivity=row["sensitivity"],
            specificity=row["specificity"],
        )

    def exchanges(self, run_id: str, method: str | None = None) -> pd.DataFrame:
        """Totals per directed edge: the latest cumulative snapshot of each (method, src, dst)."""
        where, params = self._where(run_id, method=method)
        return self._frame(
            "SELECT e.method, e.src, e.dst, e.step AS last_step, e.messages, e.bytes, e.rejected, "
            "e.updated_at FROM exchanges AS e JOIN (SELECT method, src, dst, MAX(step) AS step "
            f"FROM exchanges WHERE {where} GROUP BY method, src, dst) AS l "
            "USING (method, src, dst, step) WHERE e.run_id = ? ORDER BY e.method, e.src, e.dst",
            [*params, run_id],
        )

    def exchange_history(self, run_id: str, method: str | None = None) -> pd.DataFrame:
        """Cumulative messages / bytes / rejected per directed edge at every step logged."""
        where, params = self._where(run_id, method=method)
        return self._frame(
            "SELECT method, src, dst, step, messages, bytes, rejected, updated_at FROM exchanges "
            f"WHERE {where} ORDER BY method, src, dst, step",
            params,
        )

    def node_status(self, run_id: str) -> pd.DataFrame:
        """Current state of every (method, site): step, state, detail, updated_at."""
        return self._frame(
            "SELECT method, site, step, state, detail, updated_at FROM node_status "
            "WHERE run_id = ? ORDER BY method, site",
            (run_id,),
        )

    def privacy(self, run_id: str) -> pd.DataFrame:
        """Privacy spent per (method, site); budget is NaN when unlimited."""
        return self._frame(
            "SELECT method, site, mode, epsilon, delta, budget, noise_multiplier, clip, releases, "
            "exhausted, accountant, updated_at FROM privacy WHERE run_id = ? ORDER BY method, site",
            (run_id,),
            float_cols=("epsilon", "delta", "budget", "noise_multiplier", "clip"),
        )

    def list_models(self, run_id: str) -> pd.DataFrame:
        """Stored final models (without the weights): method, site, step, n_bytes, sha256."""
        return self._frame(
            "SELECT method, site, step, length(weights) AS n_bytes, sha256, model_config_json "
            "FROM models WHERE run_id = ? ORDER BY method, site",
            (run_id,),
        )

    def load_model(
        self, run_id: str, method: str, site: str
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(model_config, state dict) of a stored model; safetensors only, never unpickled."""
        rows = self._rows(
            "SELECT model_config_json, weights, sha256 FROM models "
            "WHERE run_id = ? AND method = ? AND site = ?",
            (run_id, method, site),
        )
        if not rows:
            raise StoreError(
                f"no stored model for run {run_id!r}, method {method!r}, site {site!r}; "
                "list_models(run_id) shows which exist"
            )
        blob = bytes(rows[0]["weights"])
        if hashlib.sha256(blob).hexdigest() != rows[0]["sha256"]:
            raise StoreError(
                f"model {run_id}/{method}/{site} fails its sha256 check: the file is damaged"
            )
        try:
            state = load_safetensors(blob)
        except SafetensorError as exc:
            raise StoreError(
                f"model {run_id}/{method}/{site} is not valid safetensors: {exc}"
            ) from exc
        return json.loads(rows[0]["model_config_json"]), state
