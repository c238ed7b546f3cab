"""Results-store migrations: each takes a store from version n to n + 1 (writers only).

`ResultsStore.open` runs them in one transaction, so a store is either migrated completely or
left as it was. Readers never migrate: they open versions from OLDEST_READABLE on and see the
tables a newer version added as empty (the app opens stores read-only).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from hospital_node.store.schema import DDL_V2, SCHEMA_VERSION, check_schema, utc_now

logger = logging.getLogger(__name__)


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Version 2 only adds tables (calibration, subgroup_auc, shared_metrics)."""
    for statement in DDL_V2:
        conn.execute(statement)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2}


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the store to SCHEMA_VERSION in one transaction; returns the version it had."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # read again under the write lock: another writer may have migrated it meanwhile
        version = check_schema(conn, path, allow_empty=False)
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](conn)
        if version < SCHEMA_VERSION:
            conn.execute(
                "UPDATE schema_info SET value = ? WHERE key = 'schema_version'",
                (str(SCHEMA_VERSION),),
            )
            conn.execute(
                "INSERT OR REPLACE INTO schema_info (key, value) VALUES ('migrated_at', ?)",
                (f"{utc_now()} from version {version}",),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if version < SCHEMA_VERSION:
        logger.info("results store %s migrated from schema %d to %d", path, version, SCHEMA_VERSION)
    return version
