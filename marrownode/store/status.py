"""The read-only view of the index that `marrownode status` and /status show."""

from __future__ import annotations

from typing import Any

from marrownode.store.database import Database
from marrownode.store.outbox import Outbox

#: What identifies a study to an operator (no patient identifiers).
_STUDY_FIELDS = ("accession_number", "study_date", "study_description")


def status_summary(db: Database, outbox: Outbox) -> dict[str, Any]:
    """Counts only, no study named (what /status serves without a login): instances,
    studies, studies per state, and each destination's backoff state. Cheap at any size: a
    few aggregate queries."""
    connection = db.connection()
    (instances,) = connection.execute("SELECT COUNT(*) FROM instances").fetchone()
    by_state = dict(connection.execute(
        "SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
    return {"instances": instances, "studies": sum(by_state.values()),
            "studies_by_state": by_state, "destinations": _destinations(connection, outbox)}


def status_view(db: Database, outbox: Outbox, limit: int | None = None,
                offset: int = 0) -> dict[str, Any]:
    """Instances in total, and per study: accession number, date and description, instances,
    state, sets and deliveries; and each destination's backoff state. limit and offset page
    the studies (oldest first); `instances` stays the whole index's count."""
    connection = db.connection()
    page = "" if limit is None else f" LIMIT {int(limit)} OFFSET {int(offset)}"
    rows = connection.execute(f"SELECT * FROM studies ORDER BY first_received{page}").fetchall()
    wanted = [row["study_uid"] for row in rows]
    marks = ",".join("?" * len(wanted))
    counts = dict(connection.execute(
        f"SELECT study_uid, COUNT(*) FROM instances WHERE study_uid IN ({marks}) "
        "GROUP BY study_uid", wanted).fetchall()) if wanted else {}
    (instances,) = connection.execute("SELECT COUNT(*) FROM instances").fetchone()
    sets: dict[str, list[dict[str, str]]] = {}
    for row in connection.execute(
            "SELECT study_uid, set_key, state, reason FROM dixon_sets "
            f"WHERE study_uid IN ({marks}) ORDER BY set_key", wanted) if wanted else []:
        sets.setdefault(row[0], []).append(
            {"key": row["set_key"], "state": row["state"], "reason": row["reason"]})
    studies = [
        {
            "deliveries": [s.as_dict() for s in outbox.summaries(row["study_uid"])],
            "study_instance_uid": row["study_uid"],
            **{key: row[key] for key in _STUDY_FIELDS},  # kept on the study's row
            "instances": counts.get(row["study_uid"], 0),
            "state": row["state"],
            "reason": row["reason"],
            "last_received": row["last_received"],
            "dixon_sets": sets.get(row["study_uid"], []),
        }
        for row in rows
    ]
    return {"instances": instances, "studies": studies,
            "destinations": _destinations(connection, outbox)}


def _destinations(connection: Any, outbox: Outbox) -> list[dict[str, Any]]:
    """Each destination's backoff state and its oldest undelivered result."""
    oldest = outbox.oldest_pending()
    known = {row["name"]: row for row in connection.execute("SELECT * FROM destinations")}
    destinations = [
        {"destination": name, "failures": row["failures"] if row else 0,
         "next_attempt_at": (row["next_attempt_at"] or None) if row else None,
         "last_error": row["last_error"] if row else "",
         "last_success_at": row["last_success_at"] if row else None,
         "paused": bool(row["paused"]) if row else False,
         # grows while nothing moves: the first number to look at when results do not arrive
         "oldest_pending_seconds": round(oldest[name], 1) if name in oldest else None}
        for name in sorted(set(known) | set(oldest)) for row in [known.get(name)]]
    return destinations
