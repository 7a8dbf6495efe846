"""Index migrations: each older schema version brought up to the current one by ordered
steps, keyed by the version they reach, run from the file's user_version."""

from __future__ import annotations

import json
import sqlite3

from marrownode.store.descriptors import STUDY_DESCRIPTORS, write_descriptors


def _columns(db: sqlite3.Connection, table: str) -> set[str] | None:
    """The table's columns, or None when the table does not exist yet (_SCHEMA makes it)."""
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    return columns or None


def _add_columns(db: sqlite3.Connection, table: str, *definitions: str) -> None:
    """ALTER TABLE ADD COLUMN for each definition the table lacks (a step may meet an index
    that an interrupted earlier run already half-migrated)."""
    columns = _columns(db, table)
    for definition in definitions:
        if columns is not None and definition.split()[0] not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {definition}")


def _to_version_2(db: sqlite3.Connection) -> None:
    """Version 1 summarised every header at receipt; version 2 summarises later."""
    _add_columns(db, "instances", "summarised INTEGER NOT NULL DEFAULT 1")


def _to_version_3(db: sqlite3.Connection) -> None:
    """Version 2 called the event count 'dirty'."""
    columns = _columns(db, "studies")
    if columns is not None and "dirty" in columns:
        db.execute("ALTER TABLE studies RENAME COLUMN dirty TO pending_events")


def _to_version_4(db: sqlite3.Connection) -> None:
    """Version 3 neither replaced receiving processes nor retried analyses."""
    _add_columns(db, "associations", "pid INTEGER")
    _add_columns(db, "studies", "analysis_attempts INTEGER NOT NULL DEFAULT 0",
                 "retry_at REAL NOT NULL DEFAULT 0", "input_digest TEXT NOT NULL DEFAULT ''")


def _to_version_5(db: sqlite3.Connection) -> None:
    """Version 4 read a study's descriptors from its instance headers, and had no pause."""
    _add_columns(db, "destinations", "paused INTEGER NOT NULL DEFAULT 0")
    columns = _columns(db, "studies")
    if columns is None or "described" in columns:
        return
    _add_columns(db, "studies", *(f"{column} TEXT NOT NULL DEFAULT ''"
                                  for column in STUDY_DESCRIPTORS),
                 "described INTEGER NOT NULL DEFAULT 0")
    if _columns(db, "instances") is not None:
        _describe_existing(db)


def _to_version_6(db: sqlite3.Connection) -> None:
    """Version 5 measured a study's time to result from its last receipt (a re-forward by a
    PACS made it 0 s)."""
    _add_columns(db, "studies", "analysed_from REAL")


def _to_version_7(db: sqlite3.Connection) -> None:
    """Version 6 kept no patient ID on a study's row, so could not find a patient's prior."""
    columns = _columns(db, "studies")
    if columns is None or "patient_id" in columns:
        return
    _add_columns(db, "studies", "patient_id TEXT NOT NULL DEFAULT ''",
                 "issuer_of_patient_id TEXT NOT NULL DEFAULT ''",
                 "study_time TEXT NOT NULL DEFAULT ''", "prior TEXT")
    if _columns(db, "instances") is not None:
        db.execute("UPDATE studies SET described = 0")
        _describe_existing(db)


#: Each step brings an index from the version before to its key (in order).
MIGRATIONS = {2: _to_version_2, 3: _to_version_3, 4: _to_version_4, 5: _to_version_5,
              6: _to_version_6, 7: _to_version_7}


def migrate(db: sqlite3.Connection) -> None:
    """Bring an index written by an older version up to this schema, step by step from its
    user_version (before _SCHEMA runs, so that its CREATE statements see the current table
    shapes). A new, empty file has version 0 and no tables: every step finds nothing to do."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    for target in sorted(MIGRATIONS):
        if version < target:
            MIGRATIONS[target](db)


def _describe_existing(db: sqlite3.Connection) -> None:
    """Fill the descriptors of studies indexed before version 5 from one of their headers."""
    rows = db.execute("SELECT study_uid, MIN(header) FROM instances WHERE summarised = 1 "
                      "GROUP BY study_uid").fetchall()
    for study_uid, header_text in rows:
        try:
            header = json.loads(header_text)
        except ValueError:
            continue  # a damaged header describes nothing; its study is read when analysed
        write_descriptors(db, study_uid, header)
