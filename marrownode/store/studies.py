"""Studies, their instances, the associations that brought them, and their Dixon sets.

Each arrow of the flow in docs/architecture.md is a row update here, committed before the next step
starts, so a restart resumes where it stopped. A study counts the events (new data, an
association that ended) not yet assessed; a verdict clears only the events it saw.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marrownode.report_shape import SetShape, StudyShape
from marrownode.states import FINISHED_STUDY_STATES, PENDING_DELIVERY_STATES, StudyState
from marrownode.store.associations import AssociationRows
from marrownode.store.database import Database
from marrownode.store.descriptors import STUDY_DESCRIPTORS, write_descriptors
from marrownode.store.patients import PatientRows


@dataclass(frozen=True)
class InstanceRow:
    """One stored instance as the index knows it."""

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


@dataclass(frozen=True)
class SetRow:
    """A Dixon set's state, as the assembler or the worker last recorded it."""

    key: str
    state: str
    reason: str = ""
    report: SetShape | None = None


def _describe(db: sqlite3.Connection, headers: list[dict[str, Any]]) -> None:
    """Copy accession number, date, description and patient name onto each study's row from
    the first of its headers that has any (once per study)."""
    seen: set[str] = set()
    for header in headers:
        study_uid = header.get("study_uid")
        if not study_uid or study_uid in seen or not any(
                header.get(column) for column in STUDY_DESCRIPTORS):
            continue
        seen.add(study_uid)
        write_descriptors(db, study_uid, header)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class StudyIndex(AssociationRows, PatientRows):
    """Ingest rows, association lifecycle, study and set states, retention."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
        with self.db.transaction() as db:
            previous = db.execute(
                "SELECT path FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
            ).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (sop_uid, study_uid, header["series_uid"], header["sop_class_uid"],
                 transfer_syntax, str(path), size_bytes, now, association_id,
                 json.dumps(header, separators=(",", ":")), int(summarised)),
            )
            db.execute(
                f"""INSERT INTO studies (study_uid, state, reason, pending_events, first_received,
                                        last_received, updated_at)
                   VALUES (?, '{StudyState.RECEIVING}', '', 1, ?, ?, ?)
                   ON CONFLICT (study_uid) DO UPDATE SET
                       state = '{StudyState.RECEIVING}', reason = '',
                       pending_events = pending_events + 1,
                       last_received = excluded.last_received, updated_at = excluded.updated_at""",
                (study_uid, now, now, now),
            )
            if summarised:
                _describe(db, [header])
        return previous["path"] if previous else None

    def unsummarised(self, study_uid: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(SOP Instance UID, path, identity header) of the study's rows still to summarise."""
        rows = self.db.connection().execute(
            "SELECT sop_instance_uid, path, header FROM instances "
            "WHERE study_uid = ? AND summarised = 0", (study_uid,)).fetchall()
        return [(row[0], row[1], self.db.json(row[2], "an instance header")) for row in rows]

    def set_headers(self, headers: dict[str, dict[str, Any]]) -> None:
        """Store full header summaries, keyed by SOP Instance UID, in one transaction."""
        with self.db.transaction() as db:
            db.executemany(
                "UPDATE instances SET header = ?, summarised = 1 WHERE sop_instance_uid = ?",
                [(json.dumps(header, separators=(",", ":")), sop_uid)
                 for sop_uid, header in headers.items()])
            _describe(db, list(headers.values()))

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether the index has a row for this SOP Instance UID."""
        return self.db.connection().execute(
            "SELECT 1 FROM instances WHERE sop_instance_uid = ?",
            (sop_instance_uid,)).fetchone() is not None

    def known_paths(self) -> set[str]:
        """Every spool path the index has a row for (start-up recovery)."""
        rows = self.db.connection().execute("SELECT path FROM instances").fetchall()
        return {row["path"] for row in rows}

    # --- associations -------------------------------------------------------------------------

    def instances(self, study_uid: str) -> list[InstanceRow]:
        """The study's instances, ordered by series and SOP Instance UID."""
        rows = self.db.connection().execute(
            "SELECT * FROM instances WHERE study_uid = ? ORDER BY series_uid, sop_instance_uid",
            (study_uid,),
        ).fetchall()
        return [
            InstanceRow(**{**dict(row), "header": self.db.json(row["header"],
                                                               "an instance header"),
                           "summarised": bool(row["summarised"])})
            for row in rows
        ]

    def instance_count(self) -> int:
        """All instances in the index."""
        count: int = self.db.connection().execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        return count

    def study(self, study_uid: str) -> dict[str, Any] | None:
        """The study's row, or None."""
        row = self.db.connection().execute(
            "SELECT * FROM studies WHERE study_uid = ?", (study_uid,)
        ).fetchone()
        return dict(row) if row else None

    def studies_to_assess(self, now: float, idle_seconds: float) -> list[dict[str, Any]]:
        """Studies with events to assess, and waiting studies whose idle timer has run out."""
        rows = self.db.connection().execute(
            f"""SELECT * FROM studies
               WHERE (pending_events > 0
                      OR (state = '{StudyState.WAITING}' AND last_received <= ?))
                 AND retry_at <= ?
               ORDER BY last_received""",
            (now - idle_seconds, now),
        ).fetchall()
        return [dict(row) for row in rows]

    def set_state(
        self,
        study_uid: str,
        state: StudyState,
        reason: str = "",
        report: StudyShape | None = None,
        if_last_received: float | None = None,
        seen_events: int | None = None,
        input_digest: str | None = None,
        analysed_from: float | None = None,
    ) -> bool:
        """Move a study to a new state; refuse if new data arrived since if_last_received.

        seen_events: the study's event count the decision was made on. Only those events are
        cleared: an association that ended while the decision was being made leaves an event,
        so the study is assessed again at once instead of waiting for the idle timer."""
        with self.db.transaction() as db:
            query = "UPDATE studies SET state = ?, reason = ?, updated_at = ?"
            params: list[Any] = [str(state), reason, time.time()]
            if seen_events is None:
                query += ", pending_events = 0"
            else:
                query += ", pending_events = MAX(pending_events - ?, 0)"
                params.append(seen_events)
            if report is not None:
                query += ", report = ?"
                params.append(json.dumps(report))
            if state is StudyState.ANALYSED:
                query += ", analysis_attempts = 0, retry_at = 0"
            if input_digest is not None:
                query += ", input_digest = ?"
                params.append(input_digest)
            if analysed_from is not None:  # the last instance the recorded analysis used
                query += ", analysed_from = ?"
                params.append(analysed_from)
            query += " WHERE study_uid = ?"
            params.append(study_uid)
            if if_last_received is not None:
                query += " AND last_received = ?"
                params.append(if_last_received)
            updated: bool = db.execute(query, params).rowcount == 1
            return updated

    def reanalyse(self, study_uid: str,
                  reason: str = "analysed again at an operator's request") -> bool:
        """Analyse the study again (an operator asks, or a prior was found): its last-analysis
        digest is forgotten and it gets an event; the reason is what its next analysis says
        it is for. False when there is no such study."""
        with self.db.transaction() as db:
            changed: bool = db.execute(
                """UPDATE studies SET input_digest = '', pending_events = pending_events + 1,
                       retry_at = 0, analysis_attempts = 0, reason = ? WHERE study_uid = ?""",
                (reason, study_uid)).rowcount == 1
        return changed

    def add_event(self, study_uid: str, kind: str, detail: str = "",
                  now: float | None = None) -> None:
        """One line of a study's trail ('*' for the node: destinations, actions)."""
        with self.db.transaction() as db:
            db.execute("INSERT INTO events (study_uid, at, kind, detail) VALUES (?, ?, ?, ?)",
                       (study_uid, time.time() if now is None else now, kind, detail[:1000]))

    def events(self, study_uid: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The study's trail, oldest first."""
        rows = self.db.connection().execute(
            "SELECT at, kind, detail FROM events WHERE study_uid = ? ORDER BY id LIMIT ?",
            (study_uid, limit)).fetchall()
        return [dict(row) for row in rows]

    def count_failed_analysis(self, study_uid: str) -> int:
        """One more failed (or killed) analysis of the study; how many since its last success."""
        with self.db.transaction() as db:
            db.execute("UPDATE studies SET analysis_attempts = analysis_attempts + 1 "
                       "WHERE study_uid = ?", (study_uid,))
            row = db.execute("SELECT analysis_attempts FROM studies WHERE study_uid = ?",
                             (study_uid,)).fetchone()
        return int(row[0]) if row else 0

    def schedule_retry(self, study_uid: str, reason: str, retry_at: float) -> None:
        """Back to waiting, assessed again (and so analysed again) from retry_at on."""
        with self.db.transaction() as db:
            db.execute(
                f"""UPDATE studies SET state = '{StudyState.WAITING}', reason = ?,
                       pending_events = pending_events + 1, retry_at = ?, updated_at = ?
                   WHERE study_uid = ?""",
                (reason, retry_at, time.time(), study_uid))

    def record_sets(self, study_uid: str, sets: list[SetRow]) -> None:
        """Replace the study's Dixon-set rows."""
        now = time.time()
        with self.db.transaction() as db:
            db.execute("DELETE FROM dixon_sets WHERE study_uid = ?", (study_uid,))
            db.executemany(
                "INSERT INTO dixon_sets VALUES (?, ?, ?, ?, ?, ?)",
                [(study_uid, s.key, str(s.state), s.reason, now, json.dumps(s.report))
                 for s in sets],
            )

    def count_by_state(self, table: str) -> dict[str, int]:
        """Rows per state of 'studies' or 'dixon_sets' (metrics)."""
        if table not in ("studies", "dixon_sets"):
            raise ValueError(f"cannot count states of {table}")
        rows = self.db.connection().execute(
            f"SELECT state, COUNT(*) FROM {table} GROUP BY state").fetchall()
        return {row[0]: row[1] for row in rows}

    # --- retention ----------------------------------------------------------------------------

    def expired_studies(self, now: float, retention_seconds: float) -> list[str]:
        """Finished studies idle for the retention period with nothing left to deliver."""
        cutoff = now - retention_seconds
        rows = self.db.connection().execute(
            f"""SELECT study_uid FROM studies s
               WHERE state IN ({_in(FINISHED_STUDY_STATES)}) AND pending_events = 0
                 AND last_received <= ? AND updated_at <= ?
                 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid
                                 AND o.state IN ({_in(PENDING_DELIVERY_STATES)}))""",
            (cutoff, cutoff),
        ).fetchall()
        return [row[0] for row in rows]

    def forget_study(self, study_uid: str) -> int:
        """Remove every row of a study; returns how many instances it had."""
        with self.db.transaction() as db:
            count: int = db.execute("DELETE FROM instances WHERE study_uid = ?",
                                    (study_uid,)).rowcount
            for table in ("dixon_sets", "outbox", "events", "studies"):
                db.execute(f"DELETE FROM {table} WHERE study_uid = ?", (study_uid,))
        return count
