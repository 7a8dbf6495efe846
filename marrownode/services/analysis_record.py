"""Recording what an analysis came back with (the assembler's second half): the report and
the sets on success; on failure a retry later, or a permanent failure with its reason and a
note naming results already sent."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

from marrownode.config import Settings
from marrownode.report_shape import StudyShape
from marrownode.services.failure_notes import FailureNotes
from marrownode.services.study_inputs import input_digest
from marrownode.services.worker import WorkerDied
from marrownode.states import SetState, StudyState
from marrownode.store.ingest import Ingestor
from marrownode.store.spool import disk_full
from marrownode.store.studies import SetRow, StudyIndex

log = logging.getLogger("marrownode.services.assembler")

#: A study whose analysis ends the worker process this many times is failed, not retried.
WORKER_DEATHS_TO_FAIL = 2
#: Any other failed analysis is tried this many times in all.
MAX_ANALYSIS_ATTEMPTS = 3
#: The first retry waits this long; each further one four times as long.
RETRY_BASE_SECONDS = 15.0


def analysis_retry(error: BaseException, attempts: int) -> float | None:
    """Seconds before a study whose attempts-th analysis ended in error is analysed again, or
    None when it has failed for good. A study that took the worker process down with it twice
    is not given a third chance to do it again."""
    limit = WORKER_DEATHS_TO_FAIL if isinstance(error, WorkerDied) else MAX_ANALYSIS_ATTEMPTS
    if attempts >= limit:
        return None
    return RETRY_BASE_SECONDS * 4.0 ** (attempts - 1)


class AnalysisRecording:
    """The assembler's recording of analysis outcomes (mixed into Assembler)."""

    settings: Settings
    studies: StudyIndex
    ingestor: Ingestor
    failure_notes: FailureNotes
    observe_analysis_seconds: Callable[[float], None]
    count_failure: Callable[[], None]
    notify: Callable[..., None]

    def wait_for_space(self, study_uid: str, reason: str) -> None:
        raise NotImplementedError

    def _sources_unchanged(self, study_uid: str, digest: str) -> bool:
        """The study's source instances and settings are still those analysed."""
        return input_digest([r.header for r in self.ingestor.summarised_instances(study_uid)],
                            self.settings) == digest

    def _record(self, study_uid: str, last: float, future: Future[StudyShape],
                seconds: float, digest: str) -> StudyShape | None:
        """Write the analysis outcome to the index; the report, or None if it failed."""
        error = future.exception()
        if error is not None:
            self._record_failure(study_uid, last, error)
            return None
        report = future.result()
        sets = [SetRow(s["key"], s.get("state", SetState.ANALYSED), s.get("reason", ""), s)
                for s in report["dixon_sets"]]
        self.studies.record_sets(study_uid, sets)
        answered = len(report.get("requests", []))
        failed = [s for s in sets if s.state == SetState.FAILED]
        state, reason = (StudyState.ANALYSED, f"{len(sets)} set(s) analysed") if sets else (
            StudyState.NO_DIXON_SET, "no in-/opposed-phase pair")
        if failed:
            reason += f", {len(failed)} failed"
        if answered:
            reason += f"; {answered} measurement request(s) answered"
        # The trail first: whoever sees the study analysed finds why a set of it failed.
        self.studies.add_event(study_uid, "analysed", f"{reason} in {seconds:.1f} s")
        for dixon_set in failed:  # a set that failed alone is a permanent failure too
            self.studies.add_event(study_uid, "failed", f"set {dixon_set.key}: "
                                   f"{dixon_set.reason}")
        if not self.studies.set_state(study_uid, state, reason, report=report,
                                      if_last_received=last, input_digest=digest,
                                      analysed_from=last) and self._sources_unchanged(
                study_uid, digest):
            # What arrived meanwhile is no source: our own results, forwarded back by a PACS
            # rule as they reached it. The analysis stands; the new events are assessed next
            # (and found unchanged) instead of analysing and sending everything again.
            self.studies.set_state(study_uid, state, reason, report=report, seen_events=0,
                                   input_digest=digest, analysed_from=last)
        for dixon_set in failed:  # a set that failed alone is a permanent failure too
            self.notify("analysis_failed", study_instance_uid=study_uid,
                        set=dixon_set.key, reason=dixon_set.reason)
        self.observe_analysis_seconds(seconds)
        log.info("event=analysis_done study=%s sets=%d seconds=%.2f", study_uid, len(sets),
                 seconds)
        return report

    def _record_failure(self, study_uid: str, last: float, error: BaseException) -> None:
        """Retry later, or fail for good with the reason (analysis_retry decides). An
        analysis that failed for want of space has not failed: it waits for space."""
        if disk_full(error):
            self.wait_for_space(study_uid, "waiting for disk space: the analysis ran out of "
                                f"space writing its results ({type(error).__name__})")
            return
        self.count_failure()
        attempts = self.studies.count_failed_analysis(study_uid)
        delay = analysis_retry(error, attempts)
        what = f"{type(error).__name__}: {error}"[:400]
        log.error("event=analysis_failed study=%s attempt=%d retry_in=%s error=%s", study_uid,
                  attempts, "never" if delay is None else f"{delay:.0f}",
                  type(error).__name__)
        if delay is None:
            reason = (f"analysis ended the worker process {attempts} times: {what}"
                      if isinstance(error, WorkerDied)
                      else f"analysis failed {attempts} times: {what}")
            partial = self.failure_notes.partial_results(study_uid)
            if partial:
                reason += (f"; {len(partial)} result object(s) already sent are incomplete: a "
                           "note saying so is sent into the study")
            self.studies.set_state(study_uid, StudyState.FAILED, reason, if_last_received=last)
            self.studies.add_event(study_uid, "failed", reason)
            self.notify("analysis_failed", study_instance_uid=study_uid, reason=reason)
            if partial:
                self.failure_notes.send(study_uid, reason, partial)
        else:
            retry = (f"analysis attempt {attempts} failed ({what}); retried in {delay:.0f} s")
            self.studies.schedule_retry(study_uid, retry, time.time() + delay)
            self.studies.add_event(study_uid, "retry", retry)
