"""The assembler: decides from the index when a study's Dixon sets are complete, hands the
study to the analysis worker, and records what came back. Every decision is written to the
index before the next step starts."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from marrownode.config import Settings
from marrownode.dixon.completion import Verdict, decide
from marrownode.report_shape import OutputEntry, PriorShape, StudyShape
from marrownode.services.analysis_record import AnalysisRecording
from marrownode.services.failure_notes import FailureNotes
from marrownode.services.loop import LoopService
from marrownode.services.result_handoff import ResultHandoff, SeriesCallback
from marrownode.services.study_inputs import (
    earlier_reports,
    input_digest,
    is_request,
    patient_fields,
)
from marrownode.services.worker import AnalysisWorker, WorkerStopped
from marrownode.services.worker_pool import WorkerPool
from marrownode.services.worker_process import SeriesWritten
from marrownode.states import StudyState
from marrownode.store.ingest import Ingestor
from marrownode.store.spool import Spool, disk_full, expected_result_bytes
from marrownode.store.studies import SetRow, StudyIndex

log = logging.getLogger(__name__)

#: Called with (study UID, report) once a study's analysis is recorded.
AnalysedCallback = Callable[[str, StudyShape], None]


@dataclass
class _Run:
    """One analysis of one study in the worker, as the node follows it."""

    study_uid: str


#: A study waiting for disk space looks again this often.
SPACE_RECHECK_SECONDS = 10.0


@dataclass(frozen=True)
class Lookups:
    """What the assembler asks beyond the index: fetch a study's images back for a request
    (True: a retrieval started), and the patient's prior a study is compared with."""

    retrieve: Callable[[str], bool] = lambda study_uid: False
    prior_for: Callable[[str], PriorShape | None] = lambda study_uid: None


class Assembler(AnalysisRecording, LoopService):
    """Completion decisions and analysis jobs, driven by the index."""

    name = "assembler"

    def __init__(
        self,
        settings: Settings,
        studies: StudyIndex,
        ingestor: Ingestor,
        spool: Spool,
        worker: AnalysisWorker | WorkerPool,
        observe_analysis_seconds: Callable[[float], None],
        on_series: SeriesCallback,
        on_analysed: AnalysedCallback,
        count_failure: Callable[[], None] = lambda: None,
        lookups: Lookups | None = None,
        notify: Callable[..., None] = lambda event, **fields: None,
        poll_seconds: float = 0.5,
    ) -> None:
        super().__init__(poll_seconds)
        self.settings = settings
        self.studies = studies
        self.ingestor = ingestor
        self.spool = spool
        self.worker = worker
        self.observe_analysis_seconds = observe_analysis_seconds
        self.on_series = on_series
        self.on_analysed = on_analysed
        self._in_flight: dict[str, Future[StudyShape]] = {}
        self._runs: dict[str, _Run] = {}
        # Outcomes the index could not take yet (a full disk): recorded again every round,
        # their studies kept in flight meanwhile, so none is left 'analysing'.
        self._unrecorded: dict[str, Callable[[], None]] = {}
        self._waiting_for_space: set[str] = set()
        self._lock = threading.Lock()
        self.handoff = ResultHandoff(lambda study_uid, entries: self.on_series(study_uid,
                                                                                entries),
                                     self._wake.set)
        self.count_failure = count_failure
        self.lookups = lookups or Lookups()
        self.notify = notify
        self.failure_notes = FailureNotes(settings, studies, spool, worker,
                                          lambda study_uid, entries: self.on_series(
                                              study_uid, entries))

    def on_start(self) -> None:
        """Start the worker and rehearse it."""
        self.worker.start()
        self.worker.warm_up()

    def on_stop(self) -> None:
        """Let the run in progress finish; queued runs stay 'analysing' for the next start."""
        self.worker.shutdown()

    def series_written(self, message: SeriesWritten) -> None:
        """Hand a written result series on at once. Called by the worker's supervisor, before
        the run's result."""
        with self._lock:
            run = self._runs.get(message.run_id)
        if run is not None:  # None: the warm-up rehearsal
            self.handoff.hand(run.study_uid, message.entries)

    def step(self, now: float) -> None:
        """Queue and record what could not be yet, then assess every study with pending
        events or an expired idle timer."""
        self.handoff.retry()
        with self._lock:
            unrecorded = list(self._unrecorded.items())
        for study_uid, record in unrecorded:
            record()  # raises while the index cannot take it: the round is failed, not lost
            with self._lock:
                self._unrecorded.pop(study_uid, None)
                self._in_flight.pop(study_uid, None)
            log.info("event=analysis_recorded_late study=%s", study_uid)
        idle = self.settings.completion.idle_seconds
        for study in self.studies.studies_to_assess(now, idle):
            with self._lock:
                if study["study_uid"] in self._in_flight:
                    continue
            self._assess(study, now, idle)

    def _assess(self, study: dict[str, Any], now: float, idle: float) -> None:
        study_uid, last = study["study_uid"], study["last_received"]
        seen = study["pending_events"]
        open_associations = bool(self.studies.open_association_ids(study_uid))
        if open_associations and now - last < idle:
            self.studies.set_state(study_uid, StudyState.WAITING, "sending association still open",
                                   if_last_received=last, seen_events=seen)
            return
        rows = self.ingestor.summarised_instances(study_uid)
        if self._same_as_analysed(study, rows):
            self._unchanged(study, open_associations)
            return
        decision = decide([r.header for r in rows], open_associations, last, now, idle,
                          self._sent_whole(study_uid))
        self.studies.record_sets(study_uid, [SetRow(s.key, s.state, s.reason)
                                             for s in decision.sets])
        requests = sum(1 for r in rows if is_request(r.header))
        if (decision.verdict is not Verdict.READY and requests and not open_associations
                and self.lookups.retrieve(study_uid)):
            # A request, and no complete set: retention removed the images it is about, or
            # they were never sent here. Fetch them back first (once per study).
            self.studies.set_state(study_uid, StudyState.WAITING, "retrieving images for a "
                                   "measurement request", if_last_received=last,
                                   seen_events=seen)
            return
        if decision.verdict is Verdict.READY or (
                decision.verdict is Verdict.NO_DIXON_SET and requests):
            # A measurement request in a study without a Dixon set is answered too ("no set").
            reason = decision.reason if decision.verdict is Verdict.READY else (
                f"{decision.reason}; answering {requests} measurement request(s)")
            if study.get("report") and not study.get("input_digest"):
                # not an idle timer: an operator's request, or a prior found (reanalyse's)
                reason = study.get("reason") or "analysed again at an operator's request"
            self._analyse(study, rows, reason, len(decision.sets))
            return
        state = (StudyState.NO_DIXON_SET if decision.verdict is Verdict.NO_DIXON_SET
                 else StudyState.WAITING)
        self.studies.set_state(study_uid, state, decision.reason, if_last_received=last,
                               seen_events=seen)

    def _same_as_analysed(self, study: dict[str, Any], rows: list[Any]) -> bool:
        """The study's sources and settings are those of its recorded analysis."""
        return bool(study.get("report")) and study.get("input_digest") == input_digest(
            [r.header for r in rows], self.settings)

    def _sent_whole(self, study_uid: str) -> frozenset[str]:
        """The study's series that a whole-study sender delivered in associations that have
        ended (completion.whole_study_senders)."""
        senders = set(self.settings.completion.whole_study_senders)
        if not senders:
            return frozenset()
        return frozenset(series_uid for series_uid, callers
                         in self.studies.series_senders(study_uid).items()
                         if callers <= senders)

    def _unchanged(self, study: dict[str, Any], open_associations: bool) -> None:
        """A PACS forwards the study again (our results in it, which are not sources): the
        same sources and settings as the last analysis. The study keeps everything it knew
        (report, sets, pattern, time to result), is never shown as waiting, and the trail
        says so once the forward has ended."""
        study_uid = study["study_uid"]
        reason = ("received again, unchanged (same source instances and settings): not "
                  "analysed or sent again")
        self.studies.set_state(study_uid, StudyState.ANALYSED, reason,
                               if_last_received=study["last_received"],
                               seen_events=study["pending_events"])
        if not open_associations:
            self.studies.add_event(study_uid, "unchanged", "received again, unchanged: not "
                                   "analysed or sent again")
            log.info("event=study_unchanged study=%s", study_uid)

    def _analyse(self, study: dict[str, Any], rows: list[Any], reason: str, sets: int) -> None:
        study_uid, last = study["study_uid"], study["last_received"]
        seen = study["pending_events"]
        digest = input_digest([r.header for r in rows], self.settings)
        if digest == study.get("input_digest") and study.get("report"):
            # A PACS forwarding the study again (results included): same sources, same
            # settings, same results. Analysing and sending again would feed the loop.
            self.studies.set_state(
                study_uid, StudyState.ANALYSED, "unchanged since the last analysis (same "
                "source instances and settings): not analysed or sent again",
                if_last_received=last, seen_events=seen)
            self.studies.add_event(study_uid, "unchanged", "same sources and settings as the "
                                   "last analysis: not analysed or sent again")
            log.info("event=study_unchanged study=%s", study_uid)
            return
        if not self._space_for_results(study_uid, sum(r.size_bytes for r in rows)):
            return
        if not self.studies.set_state(study_uid, StudyState.ANALYSING, reason,
                                      if_last_received=last, seen_events=seen):
            return  # new data arrived meanwhile: assess again
        self.studies.add_event(study_uid, "analysing", reason)
        log.info("event=set_ready study=%s sets=%d reason=%s%s", study_uid, sets,
                 reason.replace(" ", "_"),
                 patient_fields(rows[0].path) if self.settings.logging.include_phi else "")
        self._submit(study_uid, last, [(r.path, r.header) for r in rows], digest,
                     earlier_reports(self.studies.db.json(study.get("report"), "a study report")),
                     self.lookups.prior_for(study_uid))

    def _space_for_results(self, study_uid: str, source_bytes: int) -> bool:
        """Whether the results fit above the watermark; if not, the study waits for space
        (state and reason visible) instead of filling the disk, and looks again later."""
        needed = expected_result_bytes(source_bytes)
        above = self.spool.free_bytes() - self.spool.min_free_bytes
        if needed <= above:
            if study_uid in self._waiting_for_space:
                self._waiting_for_space.discard(study_uid)
                log.info("event=disk_space_available study=%s", study_uid)
            return True
        reason = (f"waiting for disk space: its results need about {needed / 1e6:.0f} MB and "
                  f"{max(above, 0) / 1e6:.0f} MB are free above storage.min_free_mb")
        self.wait_for_space(study_uid, reason)
        return False

    def wait_for_space(self, study_uid: str, reason: str) -> None:
        """The study waits, without counting a failed attempt, and is assessed again later;
        one log line when it starts waiting."""
        self.studies.schedule_retry(study_uid, reason, time.time() + SPACE_RECHECK_SECONDS)
        if study_uid not in self._waiting_for_space:
            self._waiting_for_space.add(study_uid)
            self.studies.add_event(study_uid, "waiting", reason)
            log.warning("event=waiting_for_disk_space study=%s detail=%s", study_uid,
                        reason.split(": ", 1)[1].replace(" ", "_"))

    def _submit(self, study_uid: str, last: float,
                instances: list[tuple[str, dict[str, Any]]], digest: str,
                superseded: dict[str, list[OutputEntry]], prior: PriorShape | None) -> None:
        run_id = uuid.uuid4().hex
        with self._lock:
            self._runs[run_id] = _Run(study_uid)
            future = self.worker.analyse(instances, self.spool.results_dir(study_uid), run_id,
                                         superseded, prior)
            self._in_flight[study_uid] = future
        started = time.monotonic()
        future.add_done_callback(
            lambda f: self._finished(study_uid, last, f, time.monotonic() - started, run_id,
                                     digest))

    def _finished(self, study_uid: str, last: float, future: Future[StudyShape],
                  seconds: float, run_id: str, digest: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            if future.cancelled() or isinstance(future.exception(), WorkerStopped):
                # dropped or stopped at shutdown: still 'analysing', re-run at the next start
                self._in_flight.pop(study_uid, None)
                return
        def record() -> None:
            report = self._record(study_uid, last, future, seconds, digest)
            if report is not None:
                self.on_analysed(study_uid, report)

        if self.handoff.holds(study_uid):  # recorded once all its results are queued
            with self._lock:
                self._unrecorded[study_uid] = record
            self._wake.set()
            return
        try:
            record()
        except Exception as exc:  # the index cannot take it now: the next rounds try again
            log.warning("event=analysis_unrecorded study=%s error=%s", study_uid,
                        "disk_full" if disk_full(exc) else type(exc).__name__)
            with self._lock:
                self._unrecorded[study_uid] = record
            self._wake.set()
            return
        with self._lock:
            self._in_flight.pop(study_uid, None)
        self._wake.set()
