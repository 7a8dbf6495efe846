"""The index: one SQLite database (WAL) that records every state change of the node.

Each arrow of the flow in DESIGN.md is a row update here, committed before the next step starts,
so a restart resumes where it stopped. Connections are per thread. Writers queue on a lock
before SQLite's own: SQLite makes a busy writer sleep 1, 2, 5, 10 ms... and retry, which with
four associations storing at once cost more than the writes themselves.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid        TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    dirty            INTEGER NOT NULL DEFAULT 1,  -- events not yet assessed
    first_received   REAL NOT NULL,
    last_received    REAL NOT NULL,
    updated_at       REAL NOT NULL,
    report           TEXT
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    transfer_syntax  TEXT NOT NULL,
    path             TEXT NOT NULL,
    size_bytes       INTEGER NOT NULL,
    received_at      REAL NOT NULL,
    association_id   TEXT,
    header           TEXT NOT NULL,
    summarised       INTEGER NOT NULL DEFAULT 1   -- 0: header holds only the UIDs so far
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS associations (
    association_id   TEXT PRIMARY KEY,
    calling_aet      TEXT NOT NULL,
    peer             TEXT NOT NULL,
    opened_at        REAL NOT NULL,
    closed_at        REAL,
    instances        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    destination      TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    transfer_syntax  TEXT NOT NULL,
    path             TEXT NOT NULL,
    state            TEXT NOT NULL,          -- queued | sending | delivered | failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_status      INTEGER,
    last_error       TEXT NOT NULL DEFAULT '',
    queued_at        REAL NOT NULL,
    updated_at       REAL NOT NULL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (destination, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS dixon_sets (
    study_uid        TEXT NOT NULL,
    set_key          TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    updated_at       REAL NOT NULL,
    report           TEXT,
    PRIMARY KEY (study_uid, set_key)
);
"""


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    size_bytes: int
    received_at: float
    association_id: str | None
    header: dict[str, Any]
    summarised: bool = True


class Index:
    """Thread-safe access to the node's SQLite index."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        """synchronous FULL: a commit survives power loss. NORMAL (the ingest connection only):
        a commit survives a crash of the node, and after a power loss the last commits may be
        gone, which start-up recovery repairs from the fsynced spool files."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self._local = threading.local()
        # Threads of this Index queue on the thread lock; other Index objects and other
        # receiving processes on the file lock (flock wakes the next writer at once).
        self._write_lock = threading.Lock()
        self._lock_fd = os.open(f"{self.path}.writer-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o600)
        weakref.finalize(self, os.close, self._lock_fd)
        db = self._connection()
        db.executescript(_SCHEMA)  # executescript commits on its own
        self._migrate(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring an index written by an older version up to this schema."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
        if "summarised" not in columns:  # version 1: every header was summarised at receipt
            db.execute("ALTER TABLE instances ADD COLUMN summarised INTEGER NOT NULL DEFAULT 1")

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {self.synchronous}")
            connection.execute("PRAGMA foreign_keys = ON")
            self._local.connection = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        with self._write_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def writable(self) -> bool:
        try:
            with self.transaction() as db:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS _probe (x)")
            return True
        except (sqlite3.Error, OSError):
            return False

    # --- ingest -------------------------------------------------------------------------------

    def record_instance(
        self,
        header: dict[str, Any],
        path: Path,
        size_bytes: int,
        transfer_syntax: str,
        association_id: str | None,
        now: float | None = None,
        summarised: bool = True,
    ) -> str | None:
        """Index one stored instance; return the previous path if this SOP UID was seen before.

        summarised=False: the header holds only the UIDs until
        Ingestor.summarise_pending() completes it."""
        now = time.time() if now is None else now
        sop_uid = header["sop_instance_uid"]
        study_uid = header["study_uid"]
        with self.transaction() as db:
            previous = db.execute(
                "SELECT path FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
            ).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    sop_uid,
                    study_uid,
                    header["series_uid"],
                    header["sop_class_uid"],
                    transfer_syntax,
                    str(path),
                    size_bytes,
                    now,
                    association_id,
                    json.dumps(header, separators=(",", ":")),
                    int(summarised),
                ),
            )
            db.execute(
                """INSERT INTO studies (study_uid, state, reason, dirty, first_received,
                                        last_received, updated_at)
                   VALUES (?, 'receiving', '', 1, ?, ?, ?)
                   ON CONFLICT (study_uid) DO UPDATE SET
                       state = 'receiving', reason = '', dirty = dirty + 1,
                       last_received = excluded.last_received, updated_at = excluded.updated_at""",
                (study_uid, now, now, now),
            )
            if association_id is not None:
                db.execute(
                    "UPDATE associations SET instances = instances + 1 WHERE association_id = ?",
                    (association_id,),
                )
        return previous["path"] if previous else None

    def unsummarised(self, study_uid: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(SOP Instance UID, path, identity header) of the study's rows still to summarise."""
        rows = self._connection().execute(
            "SELECT sop_instance_uid, path, header FROM instances "
            "WHERE study_uid = ? AND summarised = 0", (study_uid,)).fetchall()
        return [(row[0], row[1], json.loads(row[2])) for row in rows]

    def set_headers(self, headers: dict[str, dict[str, Any]]) -> None:
        """Store full header summaries, keyed by SOP Instance UID, in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE instances SET header = ?, summarised = 1 WHERE sop_instance_uid = ?",
                [(json.dumps(header, separators=(",", ":")), sop_uid)
                 for sop_uid, header in headers.items()])

    def known_paths(self) -> set[str]:
        rows = self._connection().execute("SELECT path FROM instances").fetchall()
        return {row["path"] for row in rows}

    def open_association(
        self, association_id: str, calling_aet: str, peer: str, now: float | None = None
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO associations VALUES (?, ?, ?, ?, NULL, 0)",
                (association_id, calling_aet, peer, time.time() if now is None else now),
            )

    def close_association(self, association_id: str, now: float | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE associations SET closed_at = ? WHERE association_id = ?",
                (time.time() if now is None else now, association_id),
            )
            # A study whose data came over this association may now be complete: look again.
            db.execute(
                """UPDATE studies SET dirty = dirty + 1 WHERE study_uid IN
                   (SELECT DISTINCT study_uid FROM instances WHERE association_id = ?)""",
                (association_id,),
            )

    def close_stale_associations(self, now: float | None = None) -> int:
        """After a restart no association from before can still be open."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE associations SET closed_at = ? WHERE closed_at IS NULL",
                (time.time() if now is None else now,),
            )
            db.execute("UPDATE studies SET dirty = dirty + 1 WHERE state NOT IN ('analysed')")
            return cursor.rowcount

    def open_association_ids(self, study_uid: str) -> set[str]:
        rows = self._connection().execute(
            """SELECT DISTINCT i.association_id FROM instances i
               JOIN associations a ON a.association_id = i.association_id
               WHERE i.study_uid = ? AND a.closed_at IS NULL""",
            (study_uid,),
        ).fetchall()
        return {row[0] for row in rows}

    # --- reading ------------------------------------------------------------------------------

    def instances(self, study_uid: str) -> list[InstanceRow]:
        rows = self._connection().execute(
            "SELECT * FROM instances WHERE study_uid = ? ORDER BY series_uid, sop_instance_uid",
            (study_uid,),
        ).fetchall()
        return [
            InstanceRow(**{**dict(row), "header": json.loads(row["header"]),
                           "summarised": bool(row["summarised"])})
            for row in rows
        ]

    def instance_count(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM instances").fetchone()[0]

    def study(self, study_uid: str) -> dict[str, Any] | None:
        row = self._connection().execute(
            "SELECT * FROM studies WHERE study_uid = ?", (study_uid,)
        ).fetchone()
        return dict(row) if row else None

    def studies_to_assess(self, now: float, idle_seconds: float) -> list[dict[str, Any]]:
        """Studies with new data or events, and waiting studies whose idle timer has run out."""
        rows = self._connection().execute(
            """SELECT * FROM studies
               WHERE dirty > 0 OR (state = 'waiting' AND last_received <= ?)
               ORDER BY last_received""",
            (now - idle_seconds,),
        ).fetchall()
        return [dict(row) for row in rows]

    def set_study_state(
        self,
        study_uid: str,
        state: str,
        reason: str = "",
        report: dict[str, Any] | None = None,
        if_last_received: float | None = None,
        seen_dirty: int | None = None,
    ) -> bool:
        """Move a study to a new state; refuse if new data arrived since if_last_received.

        seen_dirty: the study's dirty count the decision was made on. Only those events are
        cleared: an association that ended while the decision was being made leaves the study
        dirty, so it is assessed again at once instead of waiting for the idle timer."""
        with self.transaction() as db:
            query = "UPDATE studies SET state = ?, reason = ?, updated_at = ?"
            params: list[Any] = [state, reason, time.time()]
            if seen_dirty is None:
                query += ", dirty = 0"
            else:
                query += ", dirty = MAX(dirty - ?, 0)"
                params.append(seen_dirty)
            if report is not None:
                query += ", report = ?"
                params.append(json.dumps(report))
            query += " WHERE study_uid = ?"
            params.append(study_uid)
            if if_last_received is not None:
                query += " AND last_received = ?"
                params.append(if_last_received)
            return db.execute(query, params).rowcount == 1

    def record_sets(self, study_uid: str, sets: list[dict[str, Any]]) -> None:
        """Replace the study's Dixon-set rows: key, state, reason and the set's report."""
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM dixon_sets WHERE study_uid = ?", (study_uid,))
            db.executemany(
                "INSERT INTO dixon_sets VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (study_uid, s["key"], s["state"], s.get("reason", ""), now,
                     json.dumps(s.get("report")))
                    for s in sets
                ],
            )

    # --- outbox -------------------------------------------------------------------------------

    def enqueue(
        self, study_uid: str, outputs: list[dict[str, Any]], destinations: list[str],
        now: float | None = None,
    ) -> int:
        """One row per (result file x destination); a re-run re-queues the same rows."""
        now = time.time() if now is None else now
        rows = [
            (study_uid, destination, o["sop_instance_uid"], o["sop_class_uid"],
             o["transfer_syntax_uid"], o["path"], now, now, now)
            for o in outputs for destination in destinations
        ]
        with self.transaction() as db:
            db.executemany(
                """INSERT INTO outbox (study_uid, destination, sop_instance_uid, sop_class_uid,
                                       transfer_syntax, path, state, next_attempt_at, queued_at,
                                       updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)
                   ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET
                       state = 'queued', attempts = 0, path = excluded.path,
                       next_attempt_at = excluded.next_attempt_at, last_error = '',
                       updated_at = excluded.updated_at""",
                rows,
            )
        return len(rows)

    def claim_due(self, destination: str, now: float, limit: int = 500) -> list[dict[str, Any]]:
        """Queued rows whose time has come, marked 'sending' in the same transaction."""
        with self.transaction() as db:
            rows = db.execute(
                """SELECT * FROM outbox WHERE destination = ? AND state = 'queued'
                   AND next_attempt_at <= ? ORDER BY id LIMIT ?""",
                (destination, now, limit),
            ).fetchall()
            db.executemany("UPDATE outbox SET state = 'sending', updated_at = ? WHERE id = ?",
                           [(now, row["id"]) for row in rows])
        return [dict(row) for row in rows]

    def finish_delivery(self, outcomes: list[tuple[int, str, int | None, str, float]]) -> None:
        """(row id, new state, DIMSE status, error, next attempt time) for each sent row."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                """UPDATE outbox SET state = ?, last_status = ?, last_error = ?,
                       next_attempt_at = ?, attempts = attempts + 1, updated_at = ?
                   WHERE id = ?""",
                [(state, status, error, next_at, now, row_id)
                 for row_id, state, status, error, next_at in outcomes],
            )

    def requeue_interrupted(self, now: float | None = None) -> int:
        """At start: rows caught 'sending' go out again (results are idempotent), and waiting
        rows are tried at once rather than after the backoff of the previous run."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            return db.execute(
                """UPDATE outbox SET state = 'queued', next_attempt_at = MIN(next_attempt_at, ?)
                   WHERE state IN ('sending', 'queued')""", (now,)).rowcount

    def next_due(self) -> float | None:
        row = self._connection().execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'queued'").fetchone()
        return row[0]

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Rows per destination and state (for metrics)."""
        counts: dict[str, dict[str, int]] = {}
        for row in self._connection().execute(
            "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"
        ).fetchall():
            counts.setdefault(row[0], {})[row[1]] = row[2]
        return counts

    def deliveries(self, study_uid: str) -> list[dict[str, Any]]:
        db = self._connection()
        out = []
        for (destination,) in db.execute(
            "SELECT DISTINCT destination FROM outbox WHERE study_uid = ? ORDER BY destination",
            (study_uid,),
        ).fetchall():
            rows = db.execute(
                """SELECT state, COUNT(*), MIN(next_attempt_at), MAX(last_status),
                          MAX(last_error) FROM outbox
                   WHERE study_uid = ? AND destination = ? GROUP BY state""",
                (study_uid, destination),
            ).fetchall()
            by_state = {r[0]: r for r in rows}
            pending = [by_state[s] for s in ("queued", "sending") if s in by_state]
            failed = by_state.get("failed")
            out.append({
                "destination": destination,
                "delivered": by_state["delivered"][1] if "delivered" in by_state else 0,
                "pending": sum(r[1] for r in pending),
                "next_attempt_at": min((r[2] for r in pending), default=None),
                "failed": failed[1] if failed else 0,
                "failed_status": failed[3] if failed else None,
                "failed_reason": failed[4] if failed else "",
            })
        return out

    # --- metrics and retention ------------------------------------------------------------

    def count_by(self, table: str, column: str) -> dict[str, int]:
        if (table, column) not in {("studies", "state"), ("dixon_sets", "state"),
                                   ("outbox", "state")}:
            raise ValueError(f"cannot count {table}.{column}")
        rows = self._connection().execute(
            f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}").fetchall()
        return {row[0]: row[1] for row in rows}

    def expired_studies(self, now: float, retention_seconds: float) -> list[str]:
        """Finished studies idle for the retention period with nothing left to deliver."""
        cutoff = now - retention_seconds
        rows = self._connection().execute(
            """SELECT study_uid FROM studies s
               WHERE state IN ('analysed', 'no_dixon_set', 'failed') AND dirty = 0
                 AND last_received <= ? AND updated_at <= ?
                 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid
                                 AND o.state IN ('queued', 'sending'))""",
            (cutoff, cutoff),
        ).fetchall()
        return [row[0] for row in rows]

    def forget_study(self, study_uid: str) -> int:
        """Remove every row of a study; returns how many instances it had."""
        with self.transaction() as db:
            count = db.execute("DELETE FROM instances WHERE study_uid = ?",
                               (study_uid,)).rowcount
            for table in ("dixon_sets", "outbox", "studies"):
                db.execute(f"DELETE FROM {table} WHERE study_uid = ?", (study_uid,))
        return count

    def forget_closed_associations(self, before: float) -> int:
        with self.transaction() as db:
            return db.execute(
                """DELETE FROM associations WHERE closed_at IS NOT NULL AND closed_at <= ?
                   AND association_id NOT IN (SELECT DISTINCT association_id FROM instances
                                              WHERE association_id IS NOT NULL)""",
                (before,)).rowcount

    def status(self) -> dict[str, Any]:
        """Everything `marrownode status` shows."""
        db = self._connection()
        studies = []
        for row in db.execute("SELECT * FROM studies ORDER BY first_received").fetchall():
            count = db.execute(
                "SELECT COUNT(*) FROM instances WHERE study_uid = ?", (row["study_uid"],)
            ).fetchone()[0]
            sets = [
                {
                    "key": s["set_key"],
                    "state": s["state"],
                    "reason": s["reason"],
                }
                for s in db.execute(
                    "SELECT * FROM dixon_sets WHERE study_uid = ? ORDER BY set_key",
                    (row["study_uid"],),
                ).fetchall()
            ]
            studies.append(
                {
                    "deliveries": self.deliveries(row["study_uid"]),
                    "study_instance_uid": row["study_uid"],
                    "instances": count,
                    "state": row["state"],
                    "reason": row["reason"],
                    "last_received": row["last_received"],
                    "dixon_sets": sets,
                }
            )
        return {"instances": self.instance_count(), "studies": studies}
