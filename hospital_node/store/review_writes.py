"""Write side of schema version 2: calibration, subgroup AUCs, summaries shared by others."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from hospital_node.evaluation.calibration import Calibration
from hospital_node.evaluation.review import Review
from hospital_node.evaluation.subgroups import SubgroupResult
from hospital_node.evaluation.summary import SiteSummary
from hospital_node.store.schema import (
    TEST_SETS,
    check_choice,
    check_name,
    finite_or_none,
)


def iso_time(unix_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds, as every timestamp of the store."""
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="milliseconds")


def _replace_rows(
    conn: sqlite3.Connection, table: str, where: Mapping[str, Any], rows: Sequence[tuple]
) -> None:
    """Delete the rows matching `where`, then insert `rows` (whole rows in column order):
    the table keeps exactly the latest evaluation of that key. `table` is one of ours."""
    clause = " AND ".join(f"{column} = ?" for column in where)
    conn.execute(f"DELETE FROM {table} WHERE {clause}", tuple(where.values()))
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


def _bins_json(curve: Calibration) -> str:
    return json.dumps(
        [[b.lower, b.upper, b.count, b.mean_predicted, b.observed] for b in curve.bins]
    )


class ReviewWrites:
    """Mixed into ResultsStore: it provides `_write` (one short transaction per call)."""

    _write: Callable[[str | None, str], AbstractContextManager[sqlite3.Connection]]

    def log_calibration(
        self,
        run_id: str,
        method: str,
        site: str,
        step: int,
        test_set: str,
        curves: Mapping[str, Calibration | None],
    ) -> None:
        """The latest reliability diagram per finding (replaces the previous evaluation's)."""
        key = {"run_id": run_id, "method": check_name("method", method),
               "site": check_name("site", site), "test_set": check_choice(
                   "test_set", test_set, TEST_SETS)}  # fmt: skip
        rows = [
            (*key.values(), check_name("finding", finding), int(step), _bins_json(c),
             finite_or_none(c.ece), c.n_images, c.n_pos)
            for finding, c in curves.items()
            if c is not None
        ]  # fmt: skip
        with self._write(run_id, "log_calibration") as conn:
            _replace_rows(conn, "calibration", key, rows)

    def log_subgroups(
        self,
        run_id: str,
        method: str,
        site: str,
        step: int,
        test_set: str,
        results: Sequence[SubgroupResult],
    ) -> None:
        """AUC per finding in each subgroup of the latest evaluation (replaces the previous)."""
        key = {"run_id": run_id, "method": check_name("method", method),
               "site": check_name("site", site), "test_set": check_choice(
                   "test_set", test_set, TEST_SETS)}  # fmt: skip
        rows = []
        for result in results:
            e = result.evaluation
            cis = e.ci or (None,) * len(e.findings)
            for name, auc, ci, n_pos, n_neg in zip(
                e.findings, e.auc, cis, e.n_pos, e.n_neg, strict=True
            ):
                rows.append(
                    (*key.values(), check_name("attribute", result.attribute),
                     check_name("subgroup", result.group), check_name("finding", name),
                     int(step), finite_or_none(auc), ci[0] if ci else None,
                     ci[1] if ci else None, e.ci_level if ci else None, int(n_pos), int(n_neg),
                     e.n_images, e.n_patients)
                )  # fmt: skip
        with self._write(run_id, "log_subgroups") as conn:
            _replace_rows(conn, "subgroup_auc", key, rows)

    def log_review(
        self,
        run_id: str,
        method: str,
        site: str,
        step: int,
        test_set: str,
        review: Review,
        *,
        is_final: bool = False,
    ) -> None:
        """AUC rows (+ mean metric), ROC curves, calibration, subgroups and `mean_ece_<set>`."""
        store: Any = self  # ResultsStore: log_evaluation, log_roc, log_metrics
        store.log_evaluation(run_id, method, site, step, test_set, review.evaluation,
                             is_final=is_final)  # fmt: skip
        store.log_roc(run_id, method, site, step, test_set, review.rocs)
        self.log_calibration(run_id, method, site, step, test_set, review.calibration)
        self.log_subgroups(run_id, method, site, step, test_set, review.subgroups)
        eces = [c.ece for c in review.calibration.values() if c is not None]
        mean_ece = sum(eces) / len(eces) if eces else None
        store.log_metrics(run_id, method, site, step, {f"mean_ece_{test_set}": mean_ece})

    def set_shared_summary(
        self, run_id: str, summary: SiteSummary, *, via: str, received_at: float
    ) -> None:
        """Replace what the store holds from `summary.origin` (validated before it got here)."""
        s = summary
        key = {"run_id": run_id, "origin": check_name("origin", s.origin),
               "test_set": check_choice("test_set", s.test_set, TEST_SETS)}  # fmt: skip
        rows = [
            (*key.values(), check_name("finding", f.finding), check_name("method", s.method),
             int(s.boot_epoch), int(s.step), finite_or_none(f.auc), finite_or_none(f.ci_low),
             finite_or_none(f.ci_high), s.ci_level if f.ci_low is not None else None, f.n_pos,
             f.n_neg, int(f.suppressed), int(s.min_positives), int(s.n_images),
             iso_time(s.created_at),
             iso_time(received_at), check_name("via", via))
            for f in s.findings
        ]  # fmt: skip
        with self._write(run_id, "set_shared_summary") as conn:
            _replace_rows(conn, "shared_metrics", key, rows)
