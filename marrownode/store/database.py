"""The index database: one SQLite file (WAL), its schema and migrations, connections and
write transactions. The tables' jobs live in studies.py, outbox.py and status.py.

Connections are per thread. Writers queue on a thread lock and an flock before SQLite's own
lock, so concurrent writers (several associations, several receiving processes) are woken in
turn instead of sleeping in SQLite's busy handler.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from marrownode.store.migrations import migrate

SCHEMA_VERSION = 7
INDEX_FILENAME = "index.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid        TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    pending_events   INTEGER NOT NULL DEFAULT 1,  -- events (data, association ends) not assessed
    first_received   REAL NOT NULL,
    last_received    REAL NOT NULL,
    updated_at       REAL NOT NULL,
    report           TEXT,
    analysis_attempts INTEGER NOT NULL DEFAULT 0,  -- failed or killed runs since the last success
    retry_at         REAL NOT NULL DEFAULT 0,      -- not assessed again before this time
    input_digest     TEXT NOT NULL DEFAULT '',     -- source instances + settings last analysed
    described        INTEGER NOT NULL DEFAULT 0,   -- 1: the descriptors below are filled
    accession_number TEXT NOT NULL DEFAULT '',
    study_date       TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    patient_name     TEXT NOT NULL DEFAULT '',     -- shown to authenticated console users only
    patient_id       TEXT NOT NULL DEFAULT '',     -- with its issuer: finds the patient's prior
    issuer_of_patient_id TEXT NOT NULL DEFAULT '',
    study_time       TEXT NOT NULL DEFAULT '',
    prior            TEXT,                         -- the prior found in the PACS (JSON), if any
    analysed_from    REAL                          -- last_received of the analysed inputs
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
CREATE INDEX IF NOT EXISTS instances_by_association ON instances (association_id);
CREATE TABLE IF NOT EXISTS associations (
    association_id   TEXT PRIMARY KEY,
    calling_aet      TEXT NOT NULL,
    peer             TEXT NOT NULL,
    opened_at        REAL NOT NULL,
    closed_at        REAL,
    instances        INTEGER NOT NULL DEFAULT 0,  -- counted when it closes
    pid              INTEGER                    -- the receiving process that serves it
);
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    destination      TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    transfer_syntax  TEXT NOT NULL,
    path             TEXT NOT NULL,
    state            TEXT NOT NULL,          -- states.DeliveryState
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_status      INTEGER,
    last_error       TEXT NOT NULL DEFAULT '',
    queued_at        REAL NOT NULL,
    updated_at       REAL NOT NULL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (destination, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_by_study ON outbox (study_uid, state);
CREATE TABLE IF NOT EXISTS events (
    id               INTEGER PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    at               REAL NOT NULL,
    kind             TEXT NOT NULL,          -- received, analysing, analysed, failed, delivery...
    detail           TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_study ON events (study_uid, id);
CREATE TABLE IF NOT EXISTS destinations (
    name             TEXT PRIMARY KEY,
    failures         INTEGER NOT NULL DEFAULT 0,  -- failed association attempts in a row
    next_attempt_at  REAL NOT NULL DEFAULT 0,
    last_error       TEXT NOT NULL DEFAULT '',
    last_attempt_at  REAL,
    last_success_at  REAL,
    address          TEXT NOT NULL DEFAULT '',    -- AE@host:port the rows were refused by
    paused           INTEGER NOT NULL DEFAULT 0   -- an operator paused it: nothing is sent
);
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


class IndexDamaged(Exception):
    """The index file cannot be read as a database (or fails its integrity check)."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(
            f"the index {path} is damaged ({detail}). Stop the node and run `marrownode "
            "rebuild-index` with the same --config: it keeps the damaged file beside it and "
            "re-indexes the spool (study states and delivery history are lost; studies are "
            "analysed again and their results re-sent under the same UIDs)")
        self.path = path
        self.detail = printable(detail)
        # one line of printable text, whatever SQLite (or a damaged row) said
        self.args = (printable(" ".join(str(self.args[0]).split())),)


def printable(text: str) -> str:
    """Text safe for a terminal and a log: anything not printable shown as an escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def corruption(exc: BaseException) -> bool:
    """Whether an error met while using the index says the file is damaged."""
    return isinstance(exc, IndexDamaged) or (
        isinstance(exc, sqlite3.DatabaseError) and (_damage(exc) or "malformed" in str(exc)))


def index_path(storage_root: Path) -> Path:
    """Where the index of a storage root lives."""
    return Path(storage_root) / INDEX_FILENAME


def _refuse_empty(path: Path) -> None:
    """An index file that exists but is empty (a truncation, a copy that failed) would open
    as a new, empty database and silently lose every state and delivery: name it instead."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise IndexDamaged(path, f"cannot be read: {exc.strerror}") from None
    if size == 0:
        raise IndexDamaged(path, "the file is empty")
    # Never open the file here: closing any descriptor of it would drop every POSIX lock this
    # process holds on it, SQLite's included (another process would then think it is alone,
    # and remove the WAL under our feet).
    if not os.access(path, os.R_OK):
        raise IndexDamaged(path, "cannot be read: permission denied")


def _damage(exc: sqlite3.Error) -> bool:
    """Whether an error says the file is not (or no longer) a sound database."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT,
                                                      sqlite3.SQLITE_NOTADB)


class Database:
    """Thread-safe access to the index file: per-thread connections, serialised writers."""

    def __init__(self, path: Path, synchronous: str = "FULL", read_only: bool = False) -> None:
        """synchronous FULL: a commit survives power loss. NORMAL (the ingest connection only):
        a commit survives a crash of the node, and after a power loss the last commits may be
        gone, which start-up recovery repairs from the fsynced spool files.

        read_only: the commands that only look (status, history) never write, migrate or
        create anything, so they work beside a running node and on a full disk."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.read_only = read_only
        self._local = threading.local()
        _refuse_empty(self.path)
        if read_only:
            self._lock_fd = -1
            self._check_version()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Threads of this Database queue on the thread lock; other Database objects and other
        # receiving processes on the file lock (flock wakes the next writer at once).
        self._write_lock = threading.Lock()
        self._lock_fd = os.open(f"{self.path}.writer-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o600)
        weakref.finalize(self, os.close, self._lock_fd)
        try:
            with self.transaction() as db:
                migrate(db)
            db = self.connection()
            db.executescript(_SCHEMA)  # executescript commits on its own
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _damage(exc):
                raise  # locked, read-only, disk full: not damage
            self.close()
            raise IndexDamaged(self.path, str(exc)) from None

    def _check_version(self) -> None:
        """A read-only reader needs the current schema (it cannot migrate an older one)."""
        try:
            version = self.connection().execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _damage(exc):
                raise
            raise IndexDamaged(self.path, str(exc)) from None
        if version != SCHEMA_VERSION:
            raise IndexDamaged(self.path, f"schema version {version}, this marrownode reads "
                               f"{SCHEMA_VERSION}; `marrownode serve` migrates an older index")

    def check(self) -> None:
        """SQLite's quick integrity check (at start: a damaged index is named, not met later
        as a traceback in the middle of a transfer); IndexDamaged when it fails."""
        try:
            rows = self.connection().execute("PRAGMA quick_check(3)").fetchall()
        except sqlite3.DatabaseError as exc:
            raise IndexDamaged(self.path, str(exc)) from None
        problems = [row[0] for row in rows if row[0] != "ok"]
        if problems:
            raise IndexDamaged(self.path, "; ".join(problems)[:300])

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use); for reads and for transaction()."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self.read_only:
                connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro",
                                             uri=True, timeout=30.0, isolation_level=None)
                connection.row_factory = sqlite3.Row
                connection.text_factory = self._decode_text
                self._local.connection = connection
                return connection
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.text_factory = self._decode_text
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {self.synchronous}")
            connection.execute("PRAGMA foreign_keys = ON")
            self._local.connection = connection
        return connection

    def _decode_text(self, raw: bytes) -> str:
        """Every text value read: damage inside a row (bytes that are not UTF-8, which SQLite's
        quick_check does not look at) is named as damage, never printed as garbage."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IndexDamaged(self.path, "a text value in a row is not UTF-8") from None

    def json(self, text: str | None, what: str) -> Any:
        """A JSON value kept in a row (instance headers, reports); damage is named."""
        if text is None:
            return None
        try:
            return json.loads(text)
        except (ValueError, TypeError) as exc:
            raise IndexDamaged(self.path, f"{what} in a row is not JSON ({exc})") from None

    def close(self) -> None:
        """Close this thread's connection (a thread that ends should call it)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        if self.read_only:
            raise RuntimeError(f"the index {self.path} is open read-only")
        db = self.connection()
        with self._write_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")  # may fail too (SQLITE_FULL): then nothing is kept
                except BaseException:
                    if db.in_transaction:  # SQLite already rolled back after SQLITE_FULL & co.
                        db.execute("ROLLBACK")
                    raise
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def writable(self) -> bool:
        """Whether a write transaction can be committed now (health check)."""
        try:
            with self.transaction() as db:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS _probe (x)")
            return True
        except (sqlite3.Error, OSError):
            return False
