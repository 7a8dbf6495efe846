"""The node's decisions as pure functions: when a study is complete (decide), what becomes of
a sent row (outcome_for) and when it is tried again (backoff); and the index migration."""

from __future__ import annotations

import json
import sqlite3
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from marrownode.dixon.completion import Verdict, decide
from marrownode.dixon.header import summarise
from marrownode.net.sender import SendError, SendResult
from marrownode.services.deliverer import RetryPolicy, backoff, outcome_for
from marrownode.states import DeliveryState, SetState
from marrownode.store.index import Index
from marrownode.synthetic.studies import StudyOptions, build_study, extra_series

IDLE = 60.0


@cache
def _headers(kind: str) -> tuple[dict[str, Any], ...]:
    options = StudyOptions(style="siemens", study_key="decide")
    if kind == "t2_only":
        return tuple(summarise(ds) for ds in extra_series(options, "t2"))
    headers = [summarise(ds) for ds in build_study(options)]
    if kind == "missing_two":  # two opposed-phase images not yet received (the header says 12)
        opposed = [i for i, h in enumerate(headers)
                   if h.get("series_description", "").endswith("_opp")]
        headers = [h for i, h in enumerate(headers) if i not in opposed[-2:]]
    return tuple(headers)


@pytest.mark.parametrize("kind, association_open, idle, verdict, set_state, reason", [
    ("complete", False, False, Verdict.READY, SetState.READY, "complete by content"),
    ("complete", True, False, Verdict.WAITING, SetState.WAITING, "sending association"),
    ("complete", True, True, Verdict.READY, SetState.READY, "could not confirm"),
    ("missing_two", False, False, Verdict.WAITING, None, "10 of 12 images"),
    ("missing_two", False, True, Verdict.NO_DIXON_SET, None, "no in-/opposed-phase pair"),
    ("t2_only", False, False, Verdict.WAITING, None, "no Dixon set yet"),
    ("t2_only", False, True, Verdict.NO_DIXON_SET, None, "no in-/opposed-phase pair"),
    ("t2_only", True, True, Verdict.NO_DIXON_SET, None, "idle 60 s"),
])
def test_decide_table(kind: str, association_open: bool, idle: bool, verdict: Verdict,
                      set_state: SetState | None, reason: str) -> None:
    now = 1000.0
    last = now - (IDLE + 1 if idle else 1)
    decision = decide(_headers(kind), association_open, last, now, IDLE)
    assert decision.verdict is verdict
    assert reason in decision.reason or any(reason in s.reason for s in decision.sets)
    assert [s.state for s in decision.sets] == ([] if set_state is None else [set_state])


POLICY = RetryPolicy(initial_seconds=5, max_seconds=600, max_attempts=3)
NOW = 10_000.0


@pytest.mark.parametrize("result, tries, state, error, next_after", [
    (SendResult(1, 0x0000), 1, DeliveryState.DELIVERED, "", 0),
    (SendResult(1, 0xB000), 1, DeliveryState.DELIVERED, "", 0),  # coerced: kept
    (SendResult(1, 0x0107), 1, DeliveryState.DELIVERED, "", 0),
    (SendResult(1, None, SendError.NO_ASSOCIATION), 1, DeliveryState.QUEUED,
     "no_association", 5),
    (SendResult(1, None, SendError.CONNECTION_LOST), 2, DeliveryState.QUEUED,
     "connection_lost", 10),
    (SendResult(1, 0xA700), 2, DeliveryState.QUEUED, "status 0xA700", 10),
    (SendResult(1, 0x0110), 1, DeliveryState.QUEUED, "status 0x0110", 5),
    (SendResult(1, None, SendError.NO_ASSOCIATION), 3, DeliveryState.FAILED,
     "no_association", 0),  # attempts used up
    (SendResult(1, 0xA900), 1, DeliveryState.FAILED, "refused with status 0xA900", 0),
    (SendResult(1, 0xC000), 1, DeliveryState.FAILED, "refused with status 0xC000", 0),
    (SendResult(1, None, SendError.CONTEXT_REFUSED), 1, DeliveryState.FAILED,
     "SOP class or transfer syntax refused", 0),
    (SendResult(1, None, SendError.UNREADABLE), 1, DeliveryState.FAILED,
     "missing or unreadable", 0),
])
def test_outcome_for_table(result: SendResult, tries: int, state: DeliveryState, error: str,
                           next_after: float) -> None:
    outcome = outcome_for(result, tries, POLICY, NOW, jitter=1.0)
    assert (outcome.row_id, outcome.state, outcome.status) == (1, state, result.status)
    assert error in outcome.error and (error == "") == (outcome.error == "")
    assert outcome.next_attempt_at == NOW + next_after


@pytest.mark.parametrize("attempts, ceiling", [(0, 5), (1, 10), (3, 40), (7, 600), (30, 600)])
def test_backoff_doubles_is_capped_and_jitter_scales_it(attempts: int, ceiling: float) -> None:
    assert backoff(attempts, POLICY, 1.0) == ceiling
    assert backoff(attempts, POLICY, 0.5) == ceiling / 2


def test_index_of_schema_2_is_migrated_keeping_its_event_counts(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE studies (study_uid TEXT PRIMARY KEY, state TEXT NOT NULL,
                  reason TEXT NOT NULL DEFAULT '', dirty INTEGER NOT NULL DEFAULT 1,
                  first_received REAL NOT NULL, last_received REAL NOT NULL,
                  updated_at REAL NOT NULL, report TEXT)""")
    db.execute("INSERT INTO studies VALUES ('1.2', 'waiting', '', 3, 1, 2, 2, ?)",
               (json.dumps(None),))
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    index = Index(path)
    study = index.studies.study("1.2")
    assert study is not None and study["pending_events"] == 3 and "dirty" not in study
    assert index.studies.studies_to_assess(now=3, idle_seconds=600)[0]["study_uid"] == "1.2"
    assert index.db.connection().execute("PRAGMA user_version").fetchone()[0] == 3
