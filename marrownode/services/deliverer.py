"""The deliverer: sends queued results to every destination, and decides from each answer
whether a row is delivered, tried again later (exponential backoff with jitter) or failed."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marrownode.config import Destination, OutboxSettings, Settings
from marrownode.monitor import Metrics
from marrownode.net.sender import OutgoingFile, SendError, SendResult, send_batch
from marrownode.net.ul.status import kept, may_pass
from marrownode.services.loop import LoopService
from marrownode.states import DeliveryState, StudyState
from marrownode.store.outbox import DeliveryOutcome, Outbox, OutboxRow
from marrownode.store.spool import Spool
from marrownode.store.studies import StudyIndex

log = logging.getLogger(__name__)

#: Send errors that a later try may not meet (the network, a busy peer).
RETRYABLE_ERRORS = frozenset({SendError.NO_ASSOCIATION, SendError.CONNECTION_LOST})


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff doubles from initial_seconds up to max_seconds; max_attempts tries in all."""

    initial_seconds: float
    max_seconds: float
    max_attempts: int

    @classmethod
    def from_settings(cls, outbox: OutboxSettings) -> RetryPolicy:
        """The policy configured in [outbox]."""
        return cls(outbox.retry_initial_seconds, outbox.retry_max_seconds, outbox.max_attempts)


def backoff(attempts: int, policy: RetryPolicy, jitter: float) -> float:
    """Seconds before the next try after attempts failed ones; jitter in [0.5, 1] spreads
    rows that failed together."""
    return min(policy.max_seconds, policy.initial_seconds * 2.0 ** attempts) * jitter


def outcome_for(result: SendResult, tries: int, policy: RetryPolicy, now: float,
                jitter: float) -> DeliveryOutcome:
    """What becomes of a row after its tries-th attempt answered result."""
    if result.status is not None and kept(result.status):
        return DeliveryOutcome(result.key, DeliveryState.DELIVERED, result.status, "", now)
    if result.error is SendError.CONTEXT_REFUSED:
        error = "SOP class or transfer syntax refused by destination"
    elif result.error is SendError.UNREADABLE:
        error = "result file missing or unreadable"
    elif result.error in RETRYABLE_ERRORS or (
            result.status is not None and may_pass(result.status)):
        error = str(result.error) if result.error else f"status 0x{result.status:04X}"
        if tries < policy.max_attempts:
            return DeliveryOutcome(result.key, DeliveryState.QUEUED, result.status, error,
                                   now + backoff(tries - 1, policy, jitter))
    else:
        error = f"refused with status 0x{result.status or 0:04X}"
    return DeliveryOutcome(result.key, DeliveryState.FAILED, result.status, error, now)


class Deliverer(LoopService):
    """Sends queued results to every destination over one association per batch."""

    name = "deliverer"
    join_seconds = 60.0

    def __init__(self, settings: Settings, outbox: Outbox, studies: StudyIndex, spool: Spool,
                 metrics: Metrics, poll_seconds: float = 1.0, seed: int | None = None) -> None:
        super().__init__(poll_seconds)
        self.settings = settings
        self.outbox = outbox
        self.studies = studies
        self.spool = spool
        self.metrics = metrics
        self.policy = RetryPolicy.from_settings(settings.outbox)
        self._random = random.Random(seed)
        # (study, destination) -> the analysis (study updated_at) whose time to result counted.
        self._observed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._observed_lock = threading.Lock()

    def on_start(self) -> None:
        """Rows interrupted by the last stop go out again at once."""
        requeued = self.outbox.requeue_interrupted()
        if requeued:
            log.info("event=outbox_requeued rows=%d", requeued)

    def enqueue(self, study_uid: str, entries: list[dict[str, Any]]) -> None:
        """Queue the files of a result series just written (the assembler's series callback)."""
        out_dir = self.spool.results_dir(study_uid)
        outputs = [{**entry, "path": str(out_dir / entry["path"])} for entry in entries]
        destinations = [d.name for d in self.settings.destinations]
        if outputs and destinations:
            rows = self.outbox.enqueue(study_uid, outputs, destinations)
            log.info("event=results_queued study=%s rows=%d", study_uid, rows)
            self._wake.set()

    def analysis_finished(self, study_uid: str, report: dict[str, Any]) -> None:
        """Everything may have been delivered while it was encoded (the assembler's callback)."""
        for destination in self.settings.destinations:
            self._observe_if_complete(study_uid, destination.name, time.time())

    def step(self, now: float) -> None:
        """Send what is due, destination by destination."""
        for destination in self.settings.destinations:
            rows = self.outbox.claim_due(destination.name, time.time())
            if rows:
                self.deliver(destination, rows)

    def wait_seconds(self) -> float:
        """Sleep until the next row is due (at most poll_seconds)."""
        next_due = self.outbox.next_due()
        if next_due is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, next_due - time.time()))

    def deliver(self, destination: Destination, rows: list[OutboxRow]) -> None:
        """Send claimed rows over one association and record each outcome."""
        files = [OutgoingFile(r.id, Path(r.path), r.sop_class_uid, r.transfer_syntax)
                 for r in rows]
        started = time.monotonic()
        results = send_batch(files, destination.host, destination.port, destination.ae_title,
                             self.settings.node.ae_title)
        attempts = {r.id: r.attempts for r in rows}
        now = time.time()
        outcomes = [outcome_for(result, attempts[result.key] + 1, self.policy, now,
                                self._random.uniform(0.5, 1.0)) for result in results]
        self.outbox.finish(outcomes)
        for outcome in outcomes:
            if outcome.state is not DeliveryState.DELIVERED:
                self.metrics.delivery_failures.labels(destination.name).inc()
        states = Counter(outcome.state for outcome in outcomes)
        delivered = states[DeliveryState.DELIVERED]
        self.metrics.delivered.labels(destination.name).inc(delivered)
        self._observe_time_to_result(destination.name, rows, outcomes, now)
        log.info("event=delivery destination=%s sent=%d delivered=%d retry=%d failed=%d "
                 "seconds=%.2f", destination.name, len(rows), delivered,
                 states[DeliveryState.QUEUED], states[DeliveryState.FAILED],
                 time.monotonic() - started)

    def _observe_time_to_result(self, destination: str, rows: list[OutboxRow],
                                outcomes: list[DeliveryOutcome], now: float) -> None:
        delivered_ids = {o.row_id for o in outcomes if o.state is DeliveryState.DELIVERED}
        for study_uid in {r.study_uid for r in rows if r.id in delivered_ids}:
            self._observe_if_complete(study_uid, destination, now)

    def _observe_if_complete(self, study_uid: str, destination: str, now: float) -> None:
        """A study's results are in when it is analysed and none of its rows for this
        destination is pending; counted once per analysis (the delivery and the end of the
        analysis may both see it)."""
        study = self.studies.study(study_uid)
        if not study or study["state"] != StudyState.ANALYSED:
            return
        summaries = [s for s in self.outbox.summaries(study_uid) if s.destination == destination]
        if not summaries or summaries[0].pending or summaries[0].delivered == 0:
            return
        key = (study_uid, destination)
        with self._observed_lock:
            if self._observed.get(key) == study["updated_at"]:
                return
            self._observed[key] = study["updated_at"]
            self._observed.move_to_end(key)
            while len(self._observed) > 10_000:
                self._observed.popitem(last=False)
        self.metrics.time_to_result_seconds.labels(destination).observe(
            max(0.0, now - study["last_received"]))
