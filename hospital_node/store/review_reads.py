"""Read side of schema version 2 (and the review's choice of evaluation), mixed into StoreReader.

On a store of version 1 (opened read-only, so never migrated) the version-2 tables do not
exist: these queries then return nothing rather than fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from hospital_node.evaluation.calibration import Calibration, CalibrationBin

_AUC_COLUMNS = ("auc", "ci_low", "ci_high", "ci_level")
# Per (method, site): the newest evaluation with confidence intervals, else the newest one.
_REVIEWED_SQL = """
WITH newest AS (SELECT method, site, MAX(step) AS step FROM auc
                WHERE run_id = ? AND test_set = ? GROUP BY method, site),
     with_ci AS (SELECT method, site, MAX(step) AS step FROM auc
                 WHERE run_id = ? AND test_set = ? AND ci_low IS NOT NULL GROUP BY method, site),
     chosen AS (SELECT n.method, n.site, COALESCE(c.step, n.step) AS step,
                       c.step IS NOT NULL AS has_ci, n.step AS newest_step
                FROM newest AS n LEFT JOIN with_ci AS c USING (method, site))
SELECT a.method, a.site, a.step, a.test_set, a.finding, a.auc, a.ci_low, a.ci_high,
       a.ci_level, a.n_pos, a.n_neg, a.is_final, ch.has_ci, ch.newest_step
FROM auc AS a JOIN chosen AS ch USING (method, site, step)
WHERE a.run_id = ? AND a.test_set = ?
"""


def _calibration_of(row: dict[str, Any]) -> Calibration:
    bins = tuple(CalibrationBin(*values) for values in json.loads(row["bins_json"]))
    ece = float("nan") if row["ece"] is None else float(row["ece"])
    return Calibration(bins=bins, ece=ece, n_images=row["n_images"], n_pos=row["n_pos"])


class ReviewReads:
    """Queries for the review pages; StoreReader provides `_rows`, `_frame` and `_where`."""

    _rows: Callable[..., list[dict[str, Any]]]
    _frame: Callable[..., pd.DataFrame]
    _where: Callable[..., tuple[str, list[Any]]]

    def has_table(self, name: str) -> bool:
        """Whether the store has this table (stores of older versions lack the newer ones)."""
        rows = self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return bool(rows)

    def reviewed_auc(self, run_id: str, test_set: str) -> pd.DataFrame:
        """Per (method, site) the rows of the newest evaluation with confidence intervals, or of
        the newest evaluation when none has them; `has_ci`, `newest_step` say which it is.

        A simulation's final evaluation is its newest with CIs; a node computes CIs at every
        n-th periodic evaluation (`[evaluation] ci_every`), so its review lags the newest AUC
        by fewer than n evaluations (the trend shows every one).
        """
        frame = self._frame(_REVIEWED_SQL, [run_id, test_set] * 3, float_cols=_AUC_COLUMNS)
        if not frame.empty:
            frame["has_ci"] = frame["has_ci"].astype(bool)
        return frame

    def calibration(
        self, run_id: str, method: str, site: str, test_set: str
    ) -> dict[str, Calibration]:
        """The latest reliability diagram per finding (findings without one are left out)."""
        if not self.has_table("calibration"):
            return {}
        rows = self._rows(
            "SELECT * FROM calibration WHERE run_id = ? AND method = ? AND site = ? "
            "AND test_set = ?",
            (run_id, method, site, test_set),
        )
        return {row["finding"]: _calibration_of(row) for row in rows}

    def calibration_steps(self, run_id: str, test_set: str) -> pd.DataFrame:
        """method, site, step of the stored reliability diagrams."""
        if not self.has_table("calibration"):
            return pd.DataFrame(columns=["method", "site", "step"])
        return self._frame(
            "SELECT method, site, MAX(step) AS step FROM calibration WHERE run_id = ? "
            "AND test_set = ? GROUP BY method, site",
            (run_id, test_set),
        )

    def subgroup_auc(
        self,
        run_id: str,
        *,
        method: str | None = None,
        site: str | None = None,
        test_set: str | None = None,
    ) -> pd.DataFrame:
        """AUC per finding in each subgroup (sex, age band, view) of the latest evaluation."""
        columns = ["method", "site", "test_set", "attribute", "subgroup", "finding", "step",
                   "auc", "ci_low", "ci_high", "ci_level", "n_pos", "n_neg", "n_images",
                   "n_patients"]  # fmt: skip
        if not self.has_table("subgroup_auc"):
            return pd.DataFrame(columns=columns)
        where, params = self._where(run_id, method=method, site=site, test_set=test_set)
        return self._frame(
            f"SELECT {', '.join(columns)} FROM subgroup_auc WHERE {where} "
            "ORDER BY method, site, test_set, attribute, subgroup",
            params,
            float_cols=_AUC_COLUMNS,
        )

    def shared_metrics(self, run_id: str, test_set: str = "local") -> pd.DataFrame:
        """The summaries other hospitals (and this one) shared: one row per origin and finding,
        with the origin's method, boot epoch and step, when it evaluated, when and via which
        neighbour it arrived. Empty when the node does not share."""
        columns: Sequence[str] = (
            "origin", "test_set", "finding", "method", "boot_epoch", "step", "auc", "ci_low",
            "ci_high", "ci_level", "n_pos", "n_neg", "suppressed", "min_positives", "n_images",
            "created_at",
            "received_at", "via",
        )  # fmt: skip
        if not self.has_table("shared_metrics"):
            return pd.DataFrame(columns=list(columns))
        return self._frame(
            f"SELECT {', '.join(columns)} FROM shared_metrics WHERE run_id = ? AND test_set = ? "
            "ORDER BY origin",
            (run_id, test_set),
            float_cols=_AUC_COLUMNS,
        )
