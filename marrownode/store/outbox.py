"""The outbox: one durable row per (result file x destination), from queued to delivered.

Rows are claimed ('sending') and finished in transactions, so a crash mid-delivery leaves rows
that the next start sends again (results are idempotent: same UIDs, the PACS replaces).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from marrownode.report_shape import OutputEntry
from marrownode.states import DeliveryState
from marrownode.store.database import Database


@dataclass(frozen=True)
class OutboxRow:
    """A claimed row, as the deliverer sends it."""

    id: int
    study_uid: str
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    attempts: int
    queued_at: float


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one sent row: its new state, what the destination said, and when to
    try again (for a row that stays queued)."""

    row_id: int
    state: DeliveryState
    status: int | None
    error: str
    next_attempt_at: float


@dataclass(frozen=True)
class DestinationState:
    """A destination's recent answers: failed attempts in a row, when it may be tried again,
    and the address (AE@host:port) they came from."""

    name: str
    failures: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    address: str = ""
    paused: bool = False


@dataclass(frozen=True)
class DestinationSummary:
    """One study's rows for one destination, by state (status and metrics)."""

    destination: str
    delivered: int
    pending: int
    next_attempt_at: float | None
    last_error: str  # why the pending ones are still pending ("" when never tried)
    failed: int
    failed_status: int | None
    failed_reason: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `marrownode status --json` and /status."""
        return {
            "destination": self.destination, "delivered": self.delivered,
            "pending": self.pending, "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "failed": self.failed, "failed_status": self.failed_status,
            "failed_reason": self.failed_reason,
        }


class Outbox:
    """Enqueue, claim what is due, finish, requeue after a restart, next due time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def enqueue(
        self, study_uid: str, outputs: Sequence[OutputEntry], destinations: list[str],
        now: float | None = None,
    ) -> int:
        """One row per (result file x destination); a re-run re-queues the same rows."""
        now = time.time() if now is None else now
        rows = [
            (study_uid, destination, o["sop_instance_uid"], o["sop_class_uid"],
             o["transfer_syntax_uid"], o["path"], now, now, now)
            for o in outputs for destination in destinations
        ]
        with self.db.transaction() as db:
            db.executemany(
                f"""INSERT INTO outbox (study_uid, destination, sop_instance_uid, sop_class_uid,
                                       transfer_syntax, path, state, next_attempt_at, queued_at,
                                       updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, '{DeliveryState.QUEUED}', ?, ?, ?)
                   ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET
                       state = '{DeliveryState.QUEUED}', attempts = 0, path = excluded.path,
                       next_attempt_at = excluded.next_attempt_at, last_error = '',
                       queued_at = excluded.queued_at, updated_at = excluded.updated_at""",
                rows,
            )
        return len(rows)

    def claim_due(self, destination: str, now: float, limit: int = 500) -> list[OutboxRow]:
        """Queued rows whose time has come, marked 'sending' in the same transaction."""
        with self.db.transaction() as db:
            rows = db.execute(
                f"""SELECT * FROM outbox WHERE destination = ? AND state = '{DeliveryState.QUEUED}'
                   AND next_attempt_at <= ? ORDER BY study_uid, id LIMIT ?""",
                (destination, now, limit),
            ).fetchall()
            db.executemany(
                f"UPDATE outbox SET state = '{DeliveryState.SENDING}', updated_at = ? WHERE id = ?",
                [(now, row["id"]) for row in rows])
        return [OutboxRow(row["id"], row["study_uid"], row["destination"],
                          row["sop_instance_uid"], row["sop_class_uid"], row["transfer_syntax"],
                          row["path"], row["attempts"], row["queued_at"]) for row in rows]

    def finish(self, outcomes: list[DeliveryOutcome]) -> None:
        """Record what became of each sent row."""
        now = time.time()
        with self.db.transaction() as db:
            db.executemany(
                """UPDATE outbox SET state = ?, last_status = ?, last_error = ?,
                       next_attempt_at = ?, attempts = attempts + 1, updated_at = ?
                   WHERE id = ?""",
                [(str(o.state), o.status, o.error, o.next_attempt_at, now, o.row_id)
                 for o in outcomes],
            )

    def requeue_interrupted(self, now: float | None = None) -> int:
        """At start: rows caught 'sending' go out again (results are idempotent), and waiting
        rows are tried at once rather than after the backoff of the previous run (the rows'
        and their destinations'; a paused destination stays paused)."""
        now = time.time() if now is None else now
        with self.db.transaction() as db:
            requeued: int = db.execute(
                f"""UPDATE outbox SET state = '{DeliveryState.QUEUED}',
                       next_attempt_at = MIN(next_attempt_at, ?)
                   WHERE state IN ('{DeliveryState.SENDING}', '{DeliveryState.QUEUED}')""",
                (now,)).rowcount
            # the destinations' backoff too: it would hold those rows as long as before
            db.execute("UPDATE destinations SET failures = 0, next_attempt_at = 0")
            return requeued

    def requeue_stranded(self, claimed: set[int], now: float) -> int:
        """Rows 'sending' that no running attempt holds (claimed: the ids that one does) are
        queued again, due now: an attempt that ended without recording them left them there."""
        with self.db.transaction() as db:
            ids = [row[0] for row in db.execute(
                f"SELECT id FROM outbox WHERE state = '{DeliveryState.SENDING}'").fetchall()
                if row[0] not in claimed]
            db.executemany(
                f"""UPDATE outbox SET state = '{DeliveryState.QUEUED}', next_attempt_at = ?,
                       last_error = 'interrupted attempt: queued again', updated_at = ?
                   WHERE id = ?""", [(now, now, row_id) for row_id in ids])
        return len(ids)

    def oldest_pending(self, now: float | None = None) -> dict[str, float]:
        """Per destination, the age in seconds of its oldest row not yet delivered or failed
        (queued when the results were written): a number that grows when nothing moves."""
        now = time.time() if now is None else now
        rows = self.db.connection().execute(
            f"""SELECT destination, MIN(queued_at) FROM outbox
               WHERE state IN ('{DeliveryState.QUEUED}', '{DeliveryState.SENDING}')
               GROUP BY destination""").fetchall()
        return {row[0]: max(0.0, now - row[1]) for row in rows}

    def stalled(self, now: float, bound_seconds: float) -> list[str]:
        """Destinations whose deliveries make no progress although they answer: a row due
        (and its destination not backing off or paused) for longer than bound_seconds, or a
        row 'sending' for that long. The deliverer takes due rows within a second, so either
        means it is stuck."""
        rows = self.db.connection().execute(
            f"""SELECT DISTINCT o.destination FROM outbox o
               LEFT JOIN destinations d ON d.name = o.destination
               WHERE (o.state = '{DeliveryState.SENDING}' AND o.updated_at < :before)
                  OR (o.state = '{DeliveryState.QUEUED}' AND o.next_attempt_at < :before
                      AND COALESCE(d.paused, 0) = 0
                      AND COALESCE(d.next_attempt_at, 0) < :before)
               ORDER BY o.destination""", {"before": now - bound_seconds}).fetchall()
        return [row[0] for row in rows]

    def next_due(self, destination: str) -> float | None:
        """When a destination's earliest queued row may go (its own time, and the
        destination's backoff), or None when nothing is queued for it or an operator paused
        it. One destination's: another's due rows are its own lane's to send."""
        connection = self.db.connection()
        row = connection.execute(  # the outbox_due index: no scan of the whole outbox
            f"""SELECT MIN(next_attempt_at) FROM outbox
               WHERE destination = ? AND state = '{DeliveryState.QUEUED}'""",
            (destination,)).fetchone()
        if row[0] is None:
            return None
        known = self.destination(destination)
        if known.paused:
            return None
        return max(float(row[0]), known.next_attempt_at)

    # --- destinations -------------------------------------------------------------------------

    def destination(self, name: str) -> DestinationState:
        """What the node knows of a destination's recent answers (all zero when new)."""
        row = self.db.connection().execute(
            "SELECT * FROM destinations WHERE name = ?", (name,)).fetchone()
        if row is None:
            return DestinationState(name)
        return DestinationState(name, row["failures"], row["next_attempt_at"], row["last_error"],
                                row["last_attempt_at"], row["last_success_at"], row["address"],
                                bool(row["paused"]))

    def record_destination(self, state: DestinationState) -> None:
        """Store a destination's state after an attempt."""
        with self.db.transaction() as db:
            db.execute(
                """INSERT INTO destinations (name, failures, next_attempt_at, last_error,
                                            last_attempt_at, last_success_at, address)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET failures = excluded.failures,
                       next_attempt_at = excluded.next_attempt_at,
                       last_error = excluded.last_error,
                       last_attempt_at = excluded.last_attempt_at,
                       last_success_at = excluded.last_success_at,
                       address = excluded.address""",
                (state.name, state.failures, state.next_attempt_at, state.last_error,
                 state.last_attempt_at, state.last_success_at, state.address))

    def pause(self, destination: str, paused: bool) -> None:
        """An operator pauses a destination (nothing is sent to it) or resumes it (everything
        queued for it is due at once)."""
        with self.db.transaction() as db:
            db.execute("INSERT INTO destinations (name, paused) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused",
                       (destination, int(paused)))
            if not paused:
                db.execute(f"""UPDATE outbox SET next_attempt_at = ? WHERE destination = ?
                               AND state = '{DeliveryState.QUEUED}'""", (time.time(), destination))
                db.execute("UPDATE destinations SET failures = 0, next_attempt_at = 0 "
                           "WHERE name = ?", (destination,))

    def pull_forward(self, destination: str, now: float) -> int:
        """Every queued row of the destination is due now (it has just answered)."""
        with self.db.transaction() as db:
            moved: int = db.execute(
                f"""UPDATE outbox SET next_attempt_at = ? WHERE destination = ?
                   AND state = '{DeliveryState.QUEUED}' AND next_attempt_at > ?""",
                (now, destination, now)).rowcount
            return moved

    def retry(self, destination: str | None = None, study_uid: str | None = None,
              error_prefix: str = "", now: float | None = None) -> int:
        """Queue failed rows again at once (an operator's retry, a changed address), and
        forget the destinations' backoff; returns how many rows."""
        now = time.time() if now is None else now
        where: list[str] = [f"state = '{DeliveryState.FAILED}'"]
        params: list[Any] = [now, now]
        if destination is not None:
            where.append("destination = ?")
            params.append(destination)
        if study_uid is not None:
            where.append("study_uid = ?")
            params.append(study_uid)
        if error_prefix:
            where.append("last_error LIKE ? || '%'")
            params.append(error_prefix)
        with self.db.transaction() as db:
            count: int = db.execute(
                f"""UPDATE outbox SET state = '{DeliveryState.QUEUED}', next_attempt_at = ?,
                       queued_at = ?, last_error = '' WHERE {' AND '.join(where)}""",
                params).rowcount
            db.execute("UPDATE destinations SET failures = 0, next_attempt_at = 0"
                       + (" WHERE name = ?" if destination is not None else ""),
                       (destination,) if destination is not None else ())
        return count

    def retry_row(self, row_id: int, now: float | None = None) -> str | None:
        """One delivery now: a failed or queued row is due at once and its destination's
        backoff is forgotten; returns the row's study, or None when there is no such row
        waiting or failed."""
        now = time.time() if now is None else now
        with self.db.transaction() as db:
            row = db.execute(
                f"""SELECT study_uid, destination FROM outbox WHERE id = ? AND state IN
                    ('{DeliveryState.FAILED}', '{DeliveryState.QUEUED}')""", (row_id,)).fetchone()
            if row is None:
                return None
            failed = f"state = '{DeliveryState.FAILED}'"  # the old row's values on the right
            db.execute(f"""UPDATE outbox SET state = '{DeliveryState.QUEUED}', next_attempt_at = ?,
                           queued_at = CASE WHEN {failed} THEN ? ELSE queued_at END,
                           last_error = CASE WHEN {failed} THEN '' ELSE last_error END
                           WHERE id = ?""", (now, now, row_id))
            db.execute("UPDATE destinations SET failures = 0, next_attempt_at = 0 WHERE name = ?",
                       (row["destination"],))
        return str(row["study_uid"])

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per destination and state (metrics)."""
        counts: dict[str, dict[str, int]] = {}
        for row in self.db.connection().execute(
            "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"
        ).fetchall():
            counts.setdefault(row[0], {})[row[1]] = row[2]
        return counts

    def summaries(self, study_uid: str) -> list[DestinationSummary]:
        """The study's deliveries per destination."""
        rows = self.db.connection().execute(
            """SELECT o.destination, o.state, COUNT(*), MIN(o.next_attempt_at),
                      MAX(o.last_status), MAX(o.last_error), MAX(d.next_attempt_at),
                      MAX(d.last_error)
               FROM outbox o LEFT JOIN destinations d ON d.name = o.destination
               WHERE o.study_uid = ? GROUP BY o.destination, o.state
               ORDER BY o.destination""",
            (study_uid,),
        ).fetchall()
        by_destination: dict[str, dict[str, Any]] = {}
        for row in rows:
            by_destination.setdefault(row[0], {})[row[1]] = row
        return [_summary(destination, by_state)
                for destination, by_state in by_destination.items()]


def _summary(destination: str, by_state: dict[str, Any]) -> DestinationSummary:
    pending = [by_state[s] for s in (DeliveryState.QUEUED, DeliveryState.SENDING)
               if s in by_state]
    failed = by_state.get(DeliveryState.FAILED)
    delivered = by_state.get(DeliveryState.DELIVERED)
    return DestinationSummary(
        destination=destination,
        delivered=delivered[2] if delivered else 0,
        pending=sum(r[2] for r in pending),
        # a row due now still waits for its destination's backoff
        next_attempt_at=max(min(r[3] for r in pending), pending[0][6] or 0.0) if pending
        else None,
        last_error=max((r[5] for r in pending), default="") or (
            pending[0][7] or "" if pending else ""),
        failed=failed[2] if failed else 0,
        failed_status=failed[4] if failed else None,
        failed_reason=failed[5] if failed else "",
    )
