"""The node's decisions as pure functions: when a study is complete (decide), what becomes of
a sent row (outcome_for), when a destination backs off and for how long (backoff), when a
failed analysis is retried, how a rejection is named; and the index migration."""

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
from marrownode.net.ul.pdu import describe_rejection
from marrownode.services.analysis_record import analysis_retry
from marrownode.services.deliverer import (
    RetryPolicy,
    backoff,
    destination_unreachable,
    outcome_for,
)
from marrownode.services.worker import WorkerDied
from marrownode.states import DeliveryState, SetState
from marrownode.store.database import SCHEMA_VERSION
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


def test_a_whole_study_sender_completes_series_that_promise_no_count() -> None:
    """Series without ImagesInAcquisition (a PACS export): undecidable from content, so the
    idle timer would decide; delivered whole by a configured PACS peer over associations that
    have ended, they are complete at once. Only the series that peer sent count."""
    headers = tuple(summarise(ds) for ds in build_study(
        StudyOptions(style="anonymised_dual_echo", study_key="forwarded")))
    series = frozenset(h["series_uid"] for h in headers)
    waiting = decide(headers, False, 999.0, 1000.0, IDLE)
    assert waiting.verdict is Verdict.WAITING and "promise no image count" in waiting.reason
    ready = decide(headers, False, 999.0, 1000.0, IDLE, sent_whole=series)
    assert ready.verdict is Verdict.READY and "sent whole by a PACS peer" in ready.reason
    other = decide(headers, False, 999.0, 1000.0, IDLE, sent_whole=frozenset({"1.2.3"}))
    assert other.verdict is Verdict.WAITING
    still_open = decide(headers, True, 999.0, 1000.0, IDLE, sent_whole=series)
    assert still_open.verdict is Verdict.WAITING


POLICY = RetryPolicy(initial_seconds=5, max_seconds=600, give_up_after_seconds=3600)
NOW = 10_000.0
RETRY_AT = NOW + 42
CALLED_AE = "rejected permanently by the service user: called AE title not recognised"
CONGESTED = "rejected transiently by the presentation provider: temporary congestion"


@pytest.mark.parametrize("result, waited, state, error, next_at", [
    (SendResult(1, 0x0000), 0, DeliveryState.DELIVERED, "", NOW),
    (SendResult(1, 0xB000), 0, DeliveryState.DELIVERED, "", NOW),  # coerced: kept
    (SendResult(1, 0x0107), 0, DeliveryState.DELIVERED, "", NOW),
    (SendResult(1, None, SendError.NO_ASSOCIATION), 0, DeliveryState.QUEUED,
     "no_association", RETRY_AT),
    (SendResult(1, None, SendError.CONNECTION_LOST), 60, DeliveryState.QUEUED,
     "connection_lost", RETRY_AT),
    (SendResult(1, None, SendError.REJECTED_TRANSIENT, CONGESTED), 0, DeliveryState.QUEUED,
     "association rejected transiently by the presentation provider", RETRY_AT),
    (SendResult(1, 0xA700), 60, DeliveryState.QUEUED, "status 0xA700", RETRY_AT),
    (SendResult(1, 0x0110), 0, DeliveryState.QUEUED, "status 0x0110", RETRY_AT),
    (SendResult(1, None, SendError.NO_ASSOCIATION), 3600, DeliveryState.FAILED,
     "gave up after 1.0 h: no_association", NOW),  # waited as long as the policy allows
    (SendResult(1, None, SendError.REJECTED_PERMANENT, CALLED_AE), 0, DeliveryState.FAILED,
     "association rejected permanently by the service user: called AE title not recognised",
     NOW),
    (SendResult(1, 0xA900), 0, DeliveryState.FAILED, "refused with status 0xA900", NOW),
    (SendResult(1, 0xC000), 0, DeliveryState.FAILED, "refused with status 0xC000", NOW),
    (SendResult(1, None, SendError.CONTEXT_REFUSED), 0, DeliveryState.FAILED,
     "SOP class or transfer syntax refused", NOW),
    (SendResult(1, None, SendError.UNREADABLE), 0, DeliveryState.FAILED,
     "missing or unreadable", NOW),
])
def test_outcome_for_table(result: SendResult, waited: float, state: DeliveryState, error: str,
                           next_at: float) -> None:
    outcome = outcome_for(result, NOW - waited, POLICY, NOW, RETRY_AT)
    assert (outcome.row_id, outcome.state, outcome.status) == (1, state, result.status)
    assert error in outcome.error and (error == "") == (outcome.error == "")
    assert outcome.next_attempt_at == next_at


@pytest.mark.parametrize("results, unreachable", [
    ([SendResult(1, None, SendError.NO_ASSOCIATION)] * 3, True),
    ([SendResult(1, None, SendError.REJECTED_TRANSIENT, CONGESTED)], True),
    ([SendResult(1, 0xA700), SendResult(2, 0xA700)], True),  # out of resources: back off
    ([SendResult(1, 0x0000), SendResult(2, None, SendError.CONNECTION_LOST)], False),
    ([SendResult(1, None, SendError.REJECTED_PERMANENT, CALLED_AE)], False),  # it answered
    ([SendResult(1, None, SendError.CONTEXT_REFUSED)], False),
    ([SendResult(1, 0xC000)], False),
])
def test_a_destination_backs_off_only_when_nothing_got_through(results: list[SendResult],
                                                               unreachable: bool) -> None:
    assert destination_unreachable(results) is unreachable


@pytest.mark.parametrize("failures, ceiling", [(0, 5), (1, 10), (3, 40), (7, 600), (30, 600)])
def test_backoff_doubles_is_capped_and_jitter_scales_it(failures: int, ceiling: float) -> None:
    assert backoff(failures, POLICY, 1.0) == ceiling
    assert backoff(failures, POLICY, 0.5) == ceiling / 2


@pytest.mark.parametrize("error, attempts, retry_in", [
    (ValueError("bad pixel data"), 1, 15.0),
    (ValueError("bad pixel data"), 2, 60.0),
    (ValueError("bad pixel data"), 3, None),  # tried three times: failed for good
    (WorkerDied("worker process killed by signal 9"), 1, 15.0),
    (WorkerDied("worker process killed by signal 9"), 2, None),  # killed it twice
])
def test_analysis_retry_table(error: BaseException, attempts: int,
                              retry_in: float | None) -> None:
    assert analysis_retry(error, attempts) == retry_in


@pytest.mark.parametrize("codes, words", [
    ((1, 1, 7), "rejected permanently by the service user: called AE title not recognised"),
    ((1, 1, 3), "rejected permanently by the service user: calling AE title not recognised"),
    ((2, 3, 2), "rejected transiently by the presentation provider: local limit exceeded"),
    ((1, 2, 2), "rejected permanently by the ACSE provider: protocol version not supported"),
    ((1, 9, 9), "rejected permanently by source 9: reason 9"),
])
def test_rejections_are_named(codes: tuple[int, int, int], words: str) -> None:
    assert describe_rejection(*codes) == words


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
    assert index.db.connection().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert study["analysis_attempts"] == 0 and study["retry_at"] == 0  # version 4 columns
    assert index.outbox.destination("pacs").failures == 0


def test_a_restart_forgets_the_destinations_backoff_but_not_a_pause(tmp_path: Path) -> None:
    from marrownode.store.outbox import DestinationState

    index = Index(tmp_path / "index.sqlite3")
    later = 10**10
    index.outbox.record_destination(DestinationState("pacs", failures=4, next_attempt_at=later,
                                                     last_error="connection refused"))
    index.outbox.record_destination(DestinationState("archive", failures=2,
                                                     next_attempt_at=later))
    index.outbox.pause("archive", True)
    index.outbox.requeue_interrupted(now=100.0)
    pacs, archive = index.outbox.destination("pacs"), index.outbox.destination("archive")
    assert (pacs.failures, pacs.next_attempt_at) == (0, 0)  # tried at once after a restart
    assert archive.next_attempt_at == 0 and archive.paused  # an operator's pause stays


def test_a_study_says_its_results_wait_for_the_destinations_backoff(tmp_path: Path) -> None:
    from marrownode.store.outbox import DestinationState

    index = Index(tmp_path / "index.sqlite3")
    output = {"sop_instance_uid": "1.2.9", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7",
              "transfer_syntax_uid": "1.2.840.10008.1.2.1", "path": "/results/1.dcm"}
    index.outbox.enqueue("1.2", [output], ["pacs"], now=100.0)  # the row is due at 100
    index.outbox.record_destination(DestinationState("pacs", failures=1, next_attempt_at=160.0,
                                                     last_error="connection refused"))
    (summary,) = index.outbox.summaries("1.2")
    assert summary.next_attempt_at == 160.0  # not 100: the destination is held until 160
    assert summary.last_error == "connection refused"
