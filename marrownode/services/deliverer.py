"""The deliverer: sends queued results to every destination, and decides from each answer
whether a row is delivered, tried again later (exponential backoff with jitter) or failed."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from marrownode.config import Destination, OutboxSettings, Settings
from marrownode.monitor import Metrics
from marrownode.net.sender import OutgoingFile, SendError, SendResult, send_batch
from marrownode.net.ul.status import kept, may_pass
from marrownode.report_shape import OutputEntry, StudyShape
from marrownode.services.loop import LoopService
from marrownode.states import DeliveryState, StudyState
from marrownode.store.outbox import DeliveryOutcome, DestinationState, Outbox, OutboxRow
from marrownode.store.spool import Spool
from marrownode.store.studies import StudyIndex

log = logging.getLogger(__name__)

#: Send errors that a later try may not meet (the network, a busy or restarting peer).
TRANSIENT_ERRORS = frozenset({SendError.NO_ASSOCIATION, SendError.CONNECTION_LOST,
                              SendError.REJECTED_TRANSIENT})
#: Send errors whose detail is the destination's A-ASSOCIATE-RJ in words.
REJECTIONS = frozenset({SendError.REJECTED_PERMANENT, SendError.REJECTED_TRANSIENT})
#: How a permanently refused row's error begins (an address change or `retry` re-queues it).
PERMANENT_REJECTION = "association rejected permanently"


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff doubles from initial_seconds up to max_seconds; a row still undelivered
    give_up_after_seconds after it was queued is failed."""

    initial_seconds: float
    max_seconds: float
    give_up_after_seconds: float

    @classmethod
    def from_settings(cls, outbox: OutboxSettings) -> RetryPolicy:
        """The policy configured in [outbox]."""
        return cls(outbox.retry_initial_seconds, outbox.retry_max_seconds,
                   outbox.give_up_after_hours * 3600.0)


def backoff(failures: int, policy: RetryPolicy, jitter: float) -> float:
    """Seconds before the next try after failures failed ones in a row; jitter in [0.5, 1]
    spreads nodes (and destinations) that failed together."""
    return min(policy.max_seconds, policy.initial_seconds * 2.0 ** failures) * jitter


def transient(result: SendResult) -> bool:
    """Whether a later try may succeed where this one did not."""
    return result.error in TRANSIENT_ERRORS or (
        result.status is not None and not kept(result.status) and may_pass(result.status))


def destination_unreachable(results: list[SendResult]) -> bool:
    """The batch did not get through as a whole: nothing was accepted and something may pass
    later. The destination then backs off; otherwise it has answered and is due again."""
    accepted = any(r.status is not None and kept(r.status) for r in results)
    return not accepted and any(transient(r) for r in results)


def outcome_for(result: SendResult, queued_at: float, policy: RetryPolicy, now: float,
                retry_at: float) -> DeliveryOutcome:
    """What becomes of a row after an attempt answered result: delivered, failed with the
    reason, or queued until retry_at (unless it has waited longer than the policy allows)."""
    if result.status is not None and kept(result.status):
        return DeliveryOutcome(result.key, DeliveryState.DELIVERED, result.status, "", now)
    if result.error is SendError.CONTEXT_REFUSED:
        error = "SOP class or transfer syntax refused by destination"
    elif result.error is SendError.UNREADABLE:
        error = "result file missing or unreadable" + (f" ({result.detail})" if result.detail
                                                         else "")
    elif result.error is SendError.REJECTED_PERMANENT:
        error = f"association {result.detail}"
    elif transient(result):
        error = (f"association {result.detail}" if result.detail and result.error in REJECTIONS
                 else f"no association: {result.detail}"
                 if result.detail and result.error is SendError.NO_ASSOCIATION
                 else f"{result.error}: {result.detail}" if result.detail
                 else str(result.error) if result.error else f"status 0x{result.status:04X}")
        waited = now - queued_at
        if waited < policy.give_up_after_seconds:
            return DeliveryOutcome(result.key, DeliveryState.QUEUED, result.status, error,
                                   retry_at)
        error = f"gave up after {waited / 3600.0:.1f} h: {error}"
    else:
        error = f"refused with status 0x{result.status or 0:04X}"
    return DeliveryOutcome(result.key, DeliveryState.FAILED, result.status, error, now)


def destination_address(destination: Destination) -> str:
    """AE@host:port: what a permanent refusal was an answer to."""
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


class _Lane(LoopService):
    """One destination's deliveries, in a thread of their own: a hung, slow or refusing
    peer holds only this lane, never another destination's results."""

    join_seconds = 60.0

    def __init__(self, deliverer: Deliverer, destination: Destination) -> None:
        super().__init__(deliverer.poll_seconds)
        self.deliverer = deliverer
        self.destination = destination
        self.name = f"deliverer-{destination.name}"
        self.on_damage = deliverer.on_damage

    def step(self, now: float) -> None:
        """Send what is due for this destination."""
        self.deliverer.deliver_due(self.destination)

    def wait_seconds(self) -> float:
        """Until this destination's next row is due (at most poll_seconds). Another
        destination's due rows do not shorten it: this lane could not send them."""
        next_due = self.deliverer.outbox.next_due(self.destination.name)
        if next_due is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, next_due - time.time()))


class Deliverer(LoopService):
    """Sends queued results to every destination, each on its own lane, over one association
    per batch; its own loop is the watchdog that queues stranded rows again, every
    poll_seconds (rows due while a lane is busy are that lane's: the watchdog does not wait
    on them, or it would go round without pause for as long as the lane sends)."""

    name = "deliverer"
    join_seconds = 60.0

    def __init__(self, settings: Settings, outbox: Outbox, studies: StudyIndex, spool: Spool,
                 metrics: Metrics, poll_seconds: float = 1.0, seed: int | None = None,
                 notify: Callable[..., None] = lambda event, **fields: None) -> None:
        super().__init__(poll_seconds)
        self.settings = settings
        self.outbox = outbox
        self.studies = studies
        self.spool = spool
        self.metrics = metrics
        self.policy = RetryPolicy.from_settings(settings.outbox)
        self.notify = notify
        self._random = random.Random(seed)
        # (study, destination) -> the analysis (study updated_at) whose time to result counted.
        self._observed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._observed_lock = threading.Lock()
        # Rows claimed by an attempt that is still running (the watchdog leaves them alone).
        self._claimed: set[int] = set()
        self._claimed_lock = threading.Lock()
        self._lanes: list[_Lane] = []

    def on_start(self) -> None:
        """Rows interrupted by the last stop go out again at once; each destination's lane
        starts."""
        requeued = self.outbox.requeue_interrupted()
        if requeued:
            log.info("event=outbox_requeued rows=%d", requeued)
        for destination in self.settings.destinations:
            known = self.outbox.destination(destination.name)
            address = destination_address(destination)
            if known.address and known.address != address:
                again = self.outbox.retry(destination.name, error_prefix=PERMANENT_REJECTION)
                log.info("event=destination_changed destination=%s requeued=%d",
                         destination.name, again)
        self._lanes = [_Lane(self, destination) for destination in self.settings.destinations]
        for lane in self._lanes:
            lane.on_damage = self.on_damage
            lane.start()

    def on_stop(self) -> None:
        """Each lane finishes the attempt in progress (its timeouts bound it), then ends."""
        for lane in self._lanes:
            lane.stop()

    def wake(self) -> None:
        """Every lane looks at once (new results, an operator's retry)."""
        super().wake()
        for lane in self._lanes:
            lane.wake()

    def enqueue(self, study_uid: str, entries: list[OutputEntry]) -> None:
        """Queue the files of a result series just written (the assembler's series callback)."""
        out_dir = self.spool.results_dir(study_uid)
        outputs: list[OutputEntry] = [{**entry, "path": str(out_dir / entry["path"])}
                                      for entry in entries]
        destinations = [d.name for d in self.settings.destinations]
        if outputs and destinations:
            rows = self.outbox.enqueue(study_uid, outputs, destinations)
            log.info("event=results_queued study=%s rows=%d", study_uid, rows)
            self.wake()

    def analysis_finished(self, study_uid: str, report: StudyShape) -> None:
        """Everything may have been delivered while it was encoded (the assembler's callback)."""
        for destination in self.settings.destinations:
            self._observe_if_complete(study_uid, destination.name, time.time())

    def step(self, now: float) -> None:
        """The watchdog: stranded rows go back to the queue (and their lane is woken)."""
        if self.requeue_stranded():
            for lane in self._lanes:
                lane.wake()

    def deliver_due(self, destination: Destination) -> None:
        """Send what is due for one destination (its lane's round)."""
        known = self.outbox.destination(destination.name)
        if known.paused or known.next_attempt_at > time.time():
            return  # paused by an operator, or backing off: it did not answer
        with self._claimed_lock:  # claimed and held in one step: the watchdog sees both
            rows = self.outbox.claim_due(destination.name, time.time())
            self._claimed.update(r.id for r in rows)
        if not rows:
            return
        try:
            self.deliver(destination, rows)
        finally:
            with self._claimed_lock:
                self._claimed.difference_update(r.id for r in rows)

    def requeue_stranded(self) -> int:
        """The watchdog: rows left 'sending' by an attempt that did not finish them (an error
        while recording its outcome, a full disk) go back to the queue, due now. A row in an
        attempt still running is left alone."""
        with self._claimed_lock:
            requeued = self.outbox.requeue_stranded(set(self._claimed), time.time())
        if requeued:
            log.warning("event=outbox_stranded_requeued rows=%d", requeued)
        return requeued

    def deliver(self, destination: Destination, rows: list[OutboxRow]) -> None:
        """Send claimed rows over one association, record each outcome and the destination's
        answer: a destination that did not answer backs off as a whole; one that answered is
        due again at once, with everything queued for it."""
        files = [OutgoingFile(r.id, Path(r.path), r.sop_class_uid, r.transfer_syntax)
                 for r in rows]
        started = time.monotonic()
        try:
            results = send_batch(files, destination.host, destination.port,
                                 destination.ae_title, self.settings.node.ae_title,
                                 timeout=destination.association_timeout_seconds,
                                 dimse_timeout=destination.dimse_timeout_seconds)
        except Exception as exc:  # no claimed row may be left without an outcome
            log.exception("event=send_batch_error destination=%s", destination.name)
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            results = [SendResult(f.key, None, SendError.CONNECTION_LOST, detail)
                       for f in files]
        now = time.time()
        state = self._record_answer(destination, results, now)
        # Rows that may pass later wait with their destination (or briefly, if it answered).
        retry_at = (state.next_attempt_at if state.failures
                    else now + self.policy.initial_seconds)
        queued_at = {r.id: r.queued_at for r in rows}
        outcomes = [outcome_for(result, queued_at[result.key], self.policy, now, retry_at)
                    for result in results]
        self.outbox.finish(outcomes)
        if not state.failures:
            self.outbox.pull_forward(destination.name, now)
        self._count(destination.name, rows, outcomes, now)
        self._trail(destination.name, rows, outcomes)
        states = Counter(outcome.state for outcome in outcomes)
        log.info("event=delivery destination=%s studies=%d sent=%d delivered=%d retry=%d "
                 "failed=%d seconds=%.2f%s", destination.name, len({r.study_uid for r in rows}),
                 len(rows), states[DeliveryState.DELIVERED], states[DeliveryState.QUEUED],
                 states[DeliveryState.FAILED], time.monotonic() - started,
                 f" next_try_in={state.next_attempt_at - now:.1f}"
                 f" error={state.last_error.replace(' ', '_')}" if state.failures else "")

    def _trail(self, destination: str, rows: list[OutboxRow],
               outcomes: list[DeliveryOutcome]) -> None:
        """One line per study of the batch in its trail: what this attempt did."""
        study_of = {r.id: r.study_uid for r in rows}
        by_study: dict[str, Counter[DeliveryState]] = {}
        errors: dict[str, str] = {}
        for outcome in outcomes:
            study_uid = study_of[outcome.row_id]
            by_study.setdefault(study_uid, Counter())[outcome.state] += 1
            if outcome.error:
                errors.setdefault(study_uid, outcome.error)
        for study_uid, states in by_study.items():
            detail = (f"{destination}: {states[DeliveryState.DELIVERED]} delivered, "
                      f"{states[DeliveryState.QUEUED]} to retry, "
                      f"{states[DeliveryState.FAILED]} failed")
            if study_uid in errors:
                detail += f" ({errors[study_uid]})"
            self.studies.add_event(study_uid, "delivery", detail)
            if states[DeliveryState.FAILED]:
                self.notify("delivery_failed", study_instance_uid=study_uid,
                            destination=destination, failed=states[DeliveryState.FAILED],
                            reason=errors.get(study_uid, ""))

    def _record_answer(self, destination: Destination, results: list[SendResult],
                       now: float) -> DestinationState:
        known = self.outbox.destination(destination.name)
        address = destination_address(destination)
        if destination_unreachable(results):
            failures = known.failures + 1
            delay = backoff(failures - 1, self.policy, self._random.uniform(0.5, 1.0))
            first = next(r for r in results if transient(r))
            error = first.detail or str(first.error or f"status 0x{first.status or 0:04X}")
            if first.error is SendError.NO_ASSOCIATION and first.detail:
                error = f"no association: {first.detail}"
            state = DestinationState(destination.name, failures, now + delay, error, now,
                                     known.last_success_at, address)
        else:
            answered = next((r.detail for r in results if r.detail and r.error in REJECTIONS),
                            "")
            state = DestinationState(destination.name, 0, 0.0, answered,
                                     now, now if not answered else known.last_success_at,
                                     address)
        self.outbox.record_destination(state)
        return state

    def _count(self, destination: str, rows: list[OutboxRow], outcomes: list[DeliveryOutcome],
               now: float) -> None:
        failed = sum(o.state is not DeliveryState.DELIVERED for o in outcomes)
        if failed:
            self.metrics.delivery_failures.labels(destination).inc(failed)
        self.metrics.delivered.labels(destination).inc(len(outcomes) - failed)
        self._observe_time_to_result(destination, rows, outcomes, now)

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
