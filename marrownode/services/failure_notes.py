"""Partial results of an analysis that failed for good are named in the study: the result
files it had already queued are found, and the worker writes a note (an SR) naming them,
queued like any result series."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future

from marrownode.config import Settings
from marrownode.report_shape import OutputEntry
from marrownode.results.failure_note import FAILURE_NOTE_FOLDER, write_failure_note
from marrownode.services.worker import AnalysisWorker
from marrownode.services.worker_pool import WorkerPool
from marrownode.store.spool import Spool
from marrownode.store.studies import StudyIndex

log = logging.getLogger(__name__)


class FailureNotes:
    """The assembler's helper for studies failed for good after part of their results."""

    def __init__(self, settings: Settings, studies: StudyIndex, spool: Spool,
                 worker: AnalysisWorker | WorkerPool,
                 on_series: Callable[[str, list[OutputEntry]], None]) -> None:
        self.settings = settings
        self.studies = studies
        self.spool = spool
        self.worker = worker
        self.on_series = on_series

    def partial_results(self, study_uid: str) -> list[str]:
        """Result files queued for the study that its last good report does not list: what a
        failed run had already written (and maybe delivered)."""
        study = self.studies.study(study_uid) or {}
        report = self.studies.db.json(study.get("report"), "a study report") or {}
        good = {entry["sop_instance_uid"] for dixon_set in report.get("dixon_sets", [])
                for entry in dixon_set.get("outputs", [])}
        return sorted({path for sop_uid, path in self.studies.db.connection().execute(
            "SELECT sop_instance_uid, path FROM outbox WHERE study_uid = ?", (study_uid,))
            if sop_uid not in good and f"{os.sep}{FAILURE_NOTE_FOLDER}{os.sep}" not in path})

    def send(self, study_uid: str, reason: str, partial: list[str]) -> None:
        """Have the worker write the note; it is queued like any result series."""
        rows = self.studies.instances(study_uid)
        if not rows:
            return
        outputs = self.settings.outputs

        def queue(future: Future[list[OutputEntry]]) -> None:
            if future.cancelled() or future.exception() is not None:
                log.error("event=failure_note_not_written study=%s error=%s", study_uid,
                          "cancelled" if future.cancelled()
                          else type(future.exception()).__name__)
                return
            entries = future.result()
            if entries:
                self.on_series(study_uid, entries)
                self.studies.add_event(study_uid, "failure_note",
                                       "a note naming the incomplete results was queued")

        self.worker.submit(write_failure_note, rows[0].path, reason, partial, outputs.uid_root,
                           outputs.series_number_base,
                           str(self.spool.results_dir(study_uid))).add_done_callback(queue)
