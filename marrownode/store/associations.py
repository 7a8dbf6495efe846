"""The associations that delivered a study's instances: opened and closed in the index (a
study waits while one that sent it is open), closed for processes that died, forgotten with
retention; and who sent each series (completion.whole_study_senders)."""

from __future__ import annotations

import os
import time

from marrownode.states import StudyState
from marrownode.store.database import Database


class AssociationRows:
    """The association lifecycle rows of the index (StudyIndex inherits them)."""

    db: Database

    def open_association(
        self, association_id: str, calling_aet: str, peer: str, now: float | None = None
    ) -> None:
        """Record an accepted association (its study stays waiting while it is open)."""
        with self.db.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO associations VALUES (?, ?, ?, ?, NULL, 0, ?)",
                (association_id, calling_aet, peer, time.time() if now is None else now,
                 os.getpid()),
            )

    def close_association(self, association_id: str, now: float | None = None) -> None:
        """Record the end of an association: an event for every study it brought data to, and
        a line in each study's trail (how many instances, from whom)."""
        now = time.time() if now is None else now
        with self.db.transaction() as db:
            # What the association stored, read once (an index read, instances_by_association):
            # its count, each study's trail line and event. Counted here, not on every
            # C-STORE's commit: one row fewer to write per instance.
            per_study = db.execute(
                "SELECT study_uid, COUNT(*) FROM instances WHERE association_id = ? "
                "GROUP BY study_uid", (association_id,)).fetchall()
            db.execute(
                "UPDATE associations SET closed_at = ?, instances = ? WHERE association_id = ? "
                "AND closed_at IS NULL",
                (now, sum(count for _, count in per_study), association_id),
            )
            sender = db.execute("SELECT calling_aet, peer FROM associations "
                                "WHERE association_id = ?", (association_id,)).fetchone()
            db.executemany(
                "INSERT INTO events (study_uid, at, kind, detail) VALUES (?, ?, 'received', ?)",
                [(study_uid, now, f"{count} instance(s) from "
                  f"{sender[0] if sender else '?'} ({sender[1] if sender else '?'})")
                 for study_uid, count in per_study])
            db.executemany(
                "UPDATE studies SET pending_events = pending_events + 1 WHERE study_uid = ?",
                [(study_uid,) for study_uid, _ in per_study])

    def close_associations_of(self, pid: int, now: float | None = None) -> int:
        """A receiving process died: none of its associations is still open."""
        with self.db.transaction() as db:
            ids = [row[0] for row in db.execute(
                "SELECT association_id FROM associations WHERE pid = ? AND closed_at IS NULL",
                (pid,)).fetchall()]
        for association_id in ids:
            self.close_association(association_id, now)
        return len(ids)

    def close_stale_associations(self, now: float | None = None) -> int:
        """After a restart no association from before can still be open."""
        with self.db.transaction() as db:
            cursor = db.execute(
                "UPDATE associations SET closed_at = ? WHERE closed_at IS NULL",
                (time.time() if now is None else now,),
            )
            db.execute("UPDATE studies SET pending_events = pending_events + 1 "
                       f"WHERE state NOT IN ('{StudyState.ANALYSED}')")
            return cursor.rowcount

    def open_association_ids(self, study_uid: str) -> set[str]:
        """Associations still open that brought data to this study."""
        rows = self.db.connection().execute(
            """SELECT DISTINCT i.association_id FROM instances i
               JOIN associations a ON a.association_id = i.association_id
               WHERE i.study_uid = ? AND a.closed_at IS NULL""",
            (study_uid,),
        ).fetchall()
        return {row[0] for row in rows}

    # --- studies ------------------------------------------------------------------------------

    def series_senders(self, study_uid: str) -> dict[str, set[str]]:
        """Per series of the study, the calling AE titles that sent its instances, with ''
        for instances whose association is still open or unknown (recovered from the spool)."""
        found: dict[str, set[str]] = {}
        for series_uid, calling, closed in self.db.connection().execute(
                """SELECT i.series_uid, a.calling_aet, a.closed_at FROM instances i
                   LEFT JOIN associations a ON a.association_id = i.association_id
                   WHERE i.study_uid = ?""", (study_uid,)):
            found.setdefault(series_uid, set()).add(calling if closed is not None else "")
        return found

    def forget_closed_associations(self, before: float) -> int:
        """Drop closed associations that no instance refers to any more."""
        with self.db.transaction() as db:
            removed: int = db.execute(
                """DELETE FROM associations WHERE closed_at IS NOT NULL AND closed_at <= ?
                   AND association_id NOT IN (SELECT DISTINCT association_id FROM instances
                                              WHERE association_id IS NOT NULL)""",
                (before,)).rowcount
            return removed
