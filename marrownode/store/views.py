"""Read-only views of the index for the operator console: one page of studies (filtered,
searched, paged with indexed queries, so a spool of thousands answers at once), one study in
full, and the node's overview. Every query here reads; actions live in marrownode.actions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from marrownode.report_shape import StudyShape
from marrownode.states import DeliveryState, StudyState
from marrownode.store.database import Database
from marrownode.vocabulary import Pattern

#: Patterns from the most to the least worrying: a study shows its most worrying set.
PATTERN_ORDER = (Pattern.DIFFUSE, Pattern.FOCAL, Pattern.NORMAL, Pattern.NOT_ASSESSED)
DELIVERY_FILTERS = ("failed", "pending", "delivered", "none")
PAGE_SIZE = 50


@dataclass(frozen=True)
class StudyFilter:
    """What the operator asked the studies list for."""

    text: str = ""
    state: str = ""
    pattern: str = ""
    delivery: str = ""
    page: int = 1

    def __post_init__(self) -> None:
        if self.state and self.state not in set(StudyState):
            raise ValueError(f"state must be one of {', '.join(StudyState)}")
        if self.pattern and self.pattern not in PATTERN_ORDER:
            raise ValueError(f"pattern must be one of {', '.join(PATTERN_ORDER)}")
        if self.delivery and self.delivery not in DELIVERY_FILTERS:
            raise ValueError(f"delivery must be one of {', '.join(DELIVERY_FILTERS)}")


@dataclass
class StudyListRow:
    """One line of the studies list."""

    study_uid: str
    accession_number: str
    study_date: str
    study_description: str
    patient_name: str
    state: str
    reason: str
    last_received: float
    instances: int = 0
    sets: list[dict[str, str]] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    time_to_result_seconds: float | None = None
    analysed_from: float | None = None

    @property
    def pattern(self) -> str:
        """The most worrying pattern among the study's analysed sets ('' when none)."""
        found = [s["pattern"] for s in self.sets if s.get("pattern")]
        return min(found, key=PATTERN_ORDER.index) if found else ""

    @property
    def delivery_state(self) -> str:
        """failed, pending, delivered or none: the worst of the study's deliveries."""
        for state in ("failed", "pending", "delivered"):
            if self.deliveries.get(state):
                return state
        return "none"


@dataclass(frozen=True)
class StudyPage:
    """One page of studies and how many match in all."""

    rows: list[StudyListRow]
    total: int
    page: int
    pages: int


def _where(selection: StudyFilter) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    if selection.text:
        matches = " OR ".join(f"{column} LIKE :text ESCAPE '\\'" for column in (
            "accession_number", "patient_name", "study_description", "study_uid", "study_date"))
        clauses.append(f"({matches})")
    if selection.state:
        clauses.append("state = :state")
    if selection.pattern:
        clauses.append("EXISTS (SELECT 1 FROM dixon_sets d WHERE d.study_uid = s.study_uid "
                       "AND json_extract(d.report, '$.pattern') = :pattern)")
    if selection.delivery == "none":
        clauses.append("NOT EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid)")
    elif selection.delivery:
        states = {"failed": (DeliveryState.FAILED,),
                  "pending": (DeliveryState.QUEUED, DeliveryState.SENDING),
                  "delivered": (DeliveryState.DELIVERED,)}[selection.delivery]
        listed = ", ".join(f"'{state}'" for state in states)
        clauses.append(f"EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid "
                       f"AND o.state IN ({listed}))")
    escaped = selection.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    params = {"text": f"%{escaped}%", "state": selection.state, "pattern": selection.pattern}
    return " AND ".join(clauses) or "1", params


def study_page(db: Database, selection: StudyFilter, page_size: int = PAGE_SIZE) -> StudyPage:
    """The studies matching the selection, newest first, one page of them in full."""
    connection = db.connection()
    where, params = _where(selection)
    total = int(connection.execute(
        f"SELECT COUNT(*) FROM studies s WHERE {where}", params).fetchone()[0])
    pages = max(1, -(-total // page_size))
    page = min(max(1, selection.page), pages)
    rows = [StudyListRow(**{key: row[key] for key in (
                "study_uid", "accession_number", "study_date", "study_description",
                "patient_name", "state", "reason", "last_received")},
                         analysed_from=row["analysed_from"])
            for row in connection.execute(
                f"""SELECT * FROM studies s WHERE {where}
                    ORDER BY last_received DESC LIMIT :limit OFFSET :offset""",
                {**params, "limit": page_size, "offset": (page - 1) * page_size})]
    _fill_rows(db, rows)
    return StudyPage(rows, total, page, pages)


def _fill_rows(db: Database, rows: list[StudyListRow]) -> None:
    """Instances, sets and deliveries of the listed studies (indexed by study)."""
    if not rows:
        return
    connection = db.connection()
    by_uid = {row.study_uid: row for row in rows}
    marks = ", ".join("?" for _ in rows)
    uids = list(by_uid)
    for uid, count in connection.execute(
            f"SELECT study_uid, COUNT(*) FROM instances WHERE study_uid IN ({marks}) "
            "GROUP BY study_uid", uids):
        by_uid[uid].instances = count
    for uid, key, state, pattern in connection.execute(
            f"""SELECT study_uid, set_key, state, json_extract(report, '$.pattern')
                FROM dixon_sets WHERE study_uid IN ({marks}) ORDER BY set_key""", uids):
        by_uid[uid].sets.append({"key": key, "state": state, "pattern": pattern or ""})
    last_delivered: dict[str, float] = {}
    for uid, state, count, latest in connection.execute(
            f"""SELECT study_uid, state, COUNT(*), MAX(updated_at) FROM outbox
                WHERE study_uid IN ({marks}) GROUP BY study_uid, state""", uids):
        name = "pending" if state in (DeliveryState.QUEUED, DeliveryState.SENDING) else state
        deliveries = by_uid[uid].deliveries
        deliveries[name] = deliveries.get(name, 0) + count
        if state == DeliveryState.DELIVERED:
            last_delivered[uid] = latest
    for row in rows:
        if row.study_uid in last_delivered and not row.deliveries.get("pending"):
            # from the last instance the analysis used (a PACS re-forwarding the study later
            # does not make its results any faster)
            started = row.analysed_from if row.analysed_from is not None else row.last_received
            row.time_to_result_seconds = max(0.0, last_delivered[row.study_uid] - started)


@dataclass(frozen=True)
class StudyDetail:
    """Everything the study page shows."""

    study: dict[str, Any]
    report: StudyShape | None
    series: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    events: list[dict[str, Any]]


def study_detail(db: Database, study_uid: str, event_limit: int = 2000) -> StudyDetail | None:
    """One study: its row, report, series, every outbox row and its trail; None if unknown."""
    connection = db.connection()
    study = connection.execute("SELECT * FROM studies WHERE study_uid = ?",
                               (study_uid,)).fetchone()
    if study is None:
        return None
    series = []
    for row in connection.execute(
            """SELECT series_uid, COUNT(*) AS instances, MIN(header) AS header
               FROM instances WHERE study_uid = ? GROUP BY series_uid""", (study_uid,)):
        header = db.json(row["header"], "an instance header")
        series.append({"series_uid": row["series_uid"], "instances": row["instances"],
                       "number": header.get("series_number"),
                       "description": header.get("series_description") or "",
                       "modality": header.get("modality") or "",
                       "manufacturer": header.get("manufacturer") or ""})
    series.sort(key=lambda s: (s["number"] is None, s["number"] or 0, s["series_uid"]))
    deliveries = [dict(row) for row in connection.execute(
        """SELECT id, destination, sop_instance_uid, sop_class_uid, state, attempts,
                  next_attempt_at, last_status, last_error, updated_at
           FROM outbox WHERE study_uid = ?
           ORDER BY CASE state WHEN 'failed' THEN 0 WHEN 'queued' THEN 1 WHEN 'sending' THEN 2
                    ELSE 3 END, destination, id""", (study_uid,))]
    events = [dict(row) for row in connection.execute(
        "SELECT at, kind, detail FROM events WHERE study_uid = ? ORDER BY id DESC LIMIT ?",
        (study_uid, event_limit))]
    report: StudyShape | None = (db.json(study["report"], "a study report")
                                 if study["report"] else None)
    return StudyDetail(dict(study), report, series, deliveries, events)


def study_report(db: Database, study_uid: str) -> StudyShape | None:
    """The study's report alone (thumbnails, report.json); None if unknown or not analysed."""
    row = db.connection().execute("SELECT report FROM studies WHERE study_uid = ?",
                                  (study_uid,)).fetchone()
    report: StudyShape | None = (db.json(row[0], "a study report")
                                 if row is not None and row[0] else None)
    return report


@dataclass(frozen=True)
class DestinationView:
    """A destination on the overview."""

    name: str
    delivered: int = 0
    pending: int = 0
    failed: int = 0
    paused: bool = False
    next_attempt_at: float | None = None
    last_error: str = ""
    last_success_at: float | None = None
    oldest_pending_seconds: float | None = None  # grows while nothing moves


def destination_views(db: Database, names: list[str]) -> list[DestinationView]:
    """Every configured destination (and any the outbox still names): delivered, pending with
    the next try and last error, failed, paused."""
    connection = db.connection()
    counts: dict[str, dict[str, int]] = {}
    due: dict[str, float] = {}
    pending_error: dict[str, str] = {}
    queued_since: dict[str, float] = {}
    for name, state, count, next_at, error, queued_at in connection.execute(
            """SELECT destination, state, COUNT(*), MIN(next_attempt_at), MAX(last_error),
                      MIN(queued_at) FROM outbox GROUP BY destination, state"""):
        counts.setdefault(name, {})[state] = count
        if state == DeliveryState.QUEUED:
            due[name], pending_error[name] = next_at, error
        if state in (DeliveryState.QUEUED, DeliveryState.SENDING):
            queued_since[name] = min(queued_at, queued_since.get(name, queued_at))
    now = time.time()
    known = {row["name"]: row for row in connection.execute("SELECT * FROM destinations")}
    views = []
    for name in [*names, *sorted(set(counts) - set(names))]:
        by_state = counts.get(name, {})
        backoff = known.get(name)
        next_at = due.get(name)
        if next_at is not None and backoff is not None:
            next_at = max(next_at, backoff["next_attempt_at"] or 0.0)
        views.append(DestinationView(
            name=name, delivered=by_state.get(DeliveryState.DELIVERED, 0),
            pending=by_state.get(DeliveryState.QUEUED, 0) + by_state.get(DeliveryState.SENDING, 0),
            failed=by_state.get(DeliveryState.FAILED, 0),
            paused=bool(backoff["paused"]) if backoff is not None else False,
            next_attempt_at=next_at,
            last_error=(backoff["last_error"] if backoff is not None and backoff["last_error"]
                        else pending_error.get(name, "")),
            last_success_at=backoff["last_success_at"] if backoff is not None else None,
            oldest_pending_seconds=now - queued_since[name] if name in queued_since else None))
    return views


def overview_counts(db: Database) -> dict[str, Any]:
    """Studies by state, open associations, instances."""
    connection = db.connection()
    by_state = dict(connection.execute(
        "SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
    open_associations = int(connection.execute(
        "SELECT COUNT(*) FROM associations WHERE closed_at IS NULL").fetchone()[0])
    return {"studies_by_state": {str(state): by_state.get(str(state), 0)
                                 for state in StudyState},
            "studies": sum(by_state.values()), "open_associations": open_associations}
