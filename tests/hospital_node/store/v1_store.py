"""A results store of schema version 1, written with that version's DDL (frozen here).

The DDL below is a verbatim copy of what ecl-hospitals wrote before schema version 2: it
must never change, so that the migration tests keep opening a genuine version-1 store.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from data_tools.labels import FINDINGS

V1_DDL = (
    ("CREATE TABLE schema_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)"),
    (
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN "
        "('simulation', 'node')), created_at TEXT NOT NULL, updated_at TEXT NOT NULL, status "
        "TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted', 'failed')), "
        "config_json TEXT NOT NULL, topology_json TEXT NOT NULL, privacy_json TEXT)"
    ),
    (
        "CREATE TABLE sites (run_id TEXT NOT NULL, site TEXT NOT NULL, role TEXT NOT NULL CHECK "
        "(role IN ('hospital', 'reference')), n_train INTEGER NOT NULL, n_val INTEGER NOT NULL, "
        "n_test INTEGER NOT NULL, train_positives_json TEXT NOT NULL, PRIMARY KEY (run_id, "
        "site), FOREIGN KEY (run_id) REFERENCES runs (run_id) ON DELETE CASCADE)"
    ),
    (
        "CREATE TABLE metrics (run_id TEXT NOT NULL, method TEXT NOT NULL, site TEXT NOT NULL, "
        "step INTEGER NOT NULL, name TEXT NOT NULL, value REAL, wall_time REAL NOT NULL, "
        "PRIMARY KEY (run_id, method, site, step, name), FOREIGN KEY (run_id) REFERENCES runs "
        "(run_id) ON DELETE CASCADE)"
    ),
    (
        "CREATE TABLE auc (run_id TEXT NOT NULL, method TEXT NOT NULL, site TEXT NOT NULL, step "
        "INTEGER NOT NULL, test_set TEXT NOT NULL CHECK (test_set IN ('common', 'local')), "
        "finding TEXT NOT NULL, auc REAL, ci_low REAL, ci_high REAL, ci_level REAL, n_pos "
        "INTEGER NOT NULL, n_neg INTEGER NOT NULL, is_final INTEGER NOT NULL CHECK (is_final IN "
        "(0, 1)), PRIMARY KEY (run_id, method, site, step, test_set, finding), FOREIGN KEY "
        "(run_id) REFERENCES runs (run_id) ON DELETE CASCADE)"
    ),
    (
        "CREATE TABLE roc (run_id TEXT NOT NULL, method TEXT NOT NULL, site TEXT NOT NULL, "
        "test_set TEXT NOT NULL CHECK (test_set IN ('common', 'local')), finding TEXT NOT NULL, "
        "step INTEGER NOT NULL, fpr_json TEXT NOT NULL, tpr_json TEXT NOT NULL, thresholds_json "
        "TEXT NOT NULL, threshold REAL, sensitivity REAL NOT NULL, specificity REAL NOT NULL, "
        "PRIMARY KEY (run_id, method, site, test_set, finding), FOREIGN KEY (run_id) REFERENCES "
        "runs (run_id) ON DELETE CASCADE)"
    ),
    (
        "CREATE TABLE exchanges (run_id TEXT NOT NULL, method TEXT NOT NULL, src TEXT NOT NULL, "
        "dst TEXT NOT NULL, step INTEGER NOT NULL, messages INTEGER NOT NULL, bytes INTEGER NOT "
        "NULL, rejected INTEGER NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, "
        "method, src, dst, step), FOREIGN KEY (run_id) REFERENCES runs (run_id) ON DELETE "
        "CASCADE)"
    ),
    (
        "CREATE TABLE node_status (run_id TEXT NOT NULL, method TEXT NOT NULL, site TEXT NOT "
        "NULL, step INTEGER NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL, updated_at "
        "TEXT NOT NULL, PRIMARY KEY (run_id, method, site), FOREIGN KEY (run_id) REFERENCES "
        "runs (run_id) ON DELETE CASCADE)"
    ),
    (
        "CREATE TABLE privacy (run_id TEXT NOT NULL, method TEXT NOT NULL, site TEXT NOT NULL, "
        "mode TEXT NOT NULL, epsilon REAL, delta REAL, budget REAL, noise_multiplier REAL, clip "
        "REAL, releases INTEGER NOT NULL, exhausted INTEGER NOT NULL CHECK (exhausted IN (0, "
        "1)), accountant TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, method, "
        "site), FOREIGN KEY (run_id) REFERENCES runs (run_id) ON DELETE CASCADE)"
    ),
    (
        "CREATE TABLE models (run_id TEXT NOT NULL, method TEXT NOT NULL, site TEXT NOT NULL, "
        "step INTEGER NOT NULL, model_config_json TEXT NOT NULL, weights BLOB NOT NULL, sha256 "
        "TEXT NOT NULL, saved_at TEXT NOT NULL, PRIMARY KEY (run_id, method, site), FOREIGN KEY "
        "(run_id) REFERENCES runs (run_id) ON DELETE CASCADE)"
    ),
)

RUN_ID = "N1"
STEPS = (50, 100, 150)  # local-test evaluations of the version-1 node (no CIs, no review)
_TIME = "2025-01-31T12:00:00.000+00:00"


def _auc_rows(step: int) -> list[tuple]:
    rows = []
    for k, finding in enumerate(FINDINGS):
        n_pos = 0 if finding == "Hernia" else 3 + k % 4
        auc = None if n_pos == 0 else 0.5 + 0.02 * k + 0.0001 * step
        rows.append((RUN_ID, "ecl-pdmm", RUN_ID, step, "local", finding, auc, None, None, None,
                     n_pos, 20 - n_pos, 0))  # fmt: skip
    return rows


def write_v1_store(path: Path) -> None:
    """A node's store as version 1 left it: three evaluations, metrics, status, traffic."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for statement in V1_DDL:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO schema_info VALUES (?, ?)",
            [("schema_version", "1"), ("created_by", "ecl-hospitals 0.1.0"),
             ("created_at", _TIME)],
        )  # fmt: skip
        topology = {"kind": "edges", "nodes": ["N1", "N2", "N3"],
                    "edges": [["N1", "N2"], ["N1", "N3"], ["N2", "N3"]]}  # fmt: skip
        config = {"consensus": {"method": "ecl-pdmm"}, "model": {"architecture": "compact"}}
        conn.execute(
            "INSERT INTO runs VALUES (?, 'node', ?, ?, 'interrupted', ?, ?, ?)",
            (RUN_ID, _TIME, _TIME, json.dumps(config), json.dumps(topology),
             json.dumps({"mode": "off"})),
        )  # fmt: skip
        positives = json.dumps(dict.fromkeys(FINDINGS, 4))
        conn.execute("INSERT INTO sites VALUES (?, ?, 'hospital', 30, 5, 20, ?)",
                     (RUN_ID, RUN_ID, positives))  # fmt: skip
        for step in STEPS:
            conn.executemany(f"INSERT INTO auc VALUES ({', '.join('?' * 13)})", _auc_rows(step))
            conn.execute("INSERT INTO metrics VALUES (?, 'ecl-pdmm', ?, ?, 'mean_auc_local', "
                         "0.6, 0.0)", (RUN_ID, RUN_ID, step))  # fmt: skip
        conn.execute("INSERT INTO node_status VALUES (?, 'ecl-pdmm', ?, 150, 'stopped', '', ?)",
                     (RUN_ID, RUN_ID, _TIME))  # fmt: skip
        conn.execute("INSERT INTO exchanges VALUES (?, 'ecl-pdmm', 'N1', 'N2', 150, 12, 2000, "
                     "0, ?)", (RUN_ID, _TIME))  # fmt: skip
        conn.execute("COMMIT")
    finally:
        conn.close()
