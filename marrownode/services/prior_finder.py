"""Follow-up in `serve`: the prior of a study before its analysis (the node's index, or what a
PACS search kept on its row), and after it the search in the PACS when the index had none
(results first, the comparison follows as a new version), and the re-assessment of the
patient's later studies when an earlier one arrives after them (docs/follow-up.md)."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from marrownode.config import Destination, Settings
from marrownode.net.priors import StudyFound, search_prior
from marrownode.net.retrieve import retrieve_study
from marrownode.priors.record import (
    Patient,
    StudyMoment,
    choose_prior,
    moment_of,
    prior_from_report,
)
from marrownode.priors.sr_reader import prior_from_srs
from marrownode.receiving import store_encoded
from marrownode.report_shape import PriorShape, StudyShape
from marrownode.states import StudyState
from marrownode.store.ingest import Ingestor
from marrownode.store.studies import StudyIndex
from marrownode.vocabulary import PriorSource

log = logging.getLogger(__name__)


def query_peer(settings: Settings) -> Destination | None:
    """The destination asked for priors: [priors] query, else the first that allows C-GET."""
    wanted = settings.priors.query
    for destination in settings.destinations:
        if destination.name == wanted or (not wanted and destination.retrieve == "c-get"):
            return destination
    return None


def compared_with(report: StudyShape | None) -> str | None:
    """The study a report was compared with (its first compared set), or None."""
    if report is None:
        return None
    for dixon_set in report["dixon_sets"]:
        comparison = dixon_set.get("comparison")
        if comparison:
            return str(comparison["prior"]["study_instance_uid"])
    return None


class PriorFinder:
    """Finds priors for the assembler and re-assesses studies a new prior concerns."""

    def __init__(self, settings: Settings, studies: StudyIndex, ingestor: Ingestor,
                 wake: Callable[[], None]) -> None:
        self.settings = settings
        self.studies = studies
        self.ingestor = ingestor
        self.wake = wake
        self.peer = query_peer(settings) if settings.priors.enabled else None
        self._asked: set[str] = set()
        self._lock = threading.Lock()
        self._searches: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    # --- before an analysis -------------------------------------------------------------------

    def prior_for(self, study_uid: str) -> PriorShape | None:
        """The study's prior: the same patient's most recent earlier analysed study in the
        index, or the one a PACS search kept on the row, whichever is more recent."""
        if not self.settings.priors.enabled:
            return None
        row = self.studies.study(study_uid)
        patient = Patient.of(row) if row else None
        if row is None or patient is None:
            return None
        candidates = []
        for other in self.studies.patient_studies(patient.patient_id, patient.issuer):
            if other["study_uid"] == study_uid or not other["report"]:
                continue
            prior = prior_from_report(json.loads(other["report"]), moment_of(other),
                                      PriorSource.INDEX)
            if prior is not None:
                candidates.append((moment_of(other), prior))
        if row.get("prior"):
            kept: PriorShape = json.loads(row["prior"])
            if not any(p["study_instance_uid"] == kept["study_instance_uid"]
                       for _, p in candidates):
                candidates.append((StudyMoment(kept["study_date"], kept["study_time"]), kept))
        return choose_prior(moment_of(row), candidates, self.settings.priors.look_back_years)

    # --- after an analysis --------------------------------------------------------------------

    def analysed(self, study_uid: str, report: StudyShape) -> None:
        """Re-assess the patient's later studies this one is a closer prior of; and, when
        the index held no prior, search the PACS (in the background)."""
        if not self.settings.priors.enabled:
            return
        row = self.studies.study(study_uid)
        patient = Patient.of(row) if row else None
        if row is None or patient is None:
            return
        moment = moment_of(row)
        if prior_from_report(report, moment, PriorSource.INDEX) is not None:
            self._reassess_later(study_uid, moment, patient)
        if compared_with(report) is None and self.peer is not None:
            with self._lock:
                if study_uid in self._asked:
                    return
                self._asked.add(study_uid)
            self._searches.put(study_uid)

    def _reassess_later(self, study_uid: str, moment: StudyMoment, patient: Patient) -> None:
        years = self.settings.priors.look_back_years
        studies = self.studies.patient_studies(patient.patient_id, patient.issuer)
        moments = {other["study_uid"]: moment_of(other) for other in studies}
        for other in studies:
            later = moments[other["study_uid"]]
            if (other["state"] != StudyState.ANALYSED or not moment.is_before(later)
                    or not moment.within(later, years)):
                continue
            current = compared_with(json.loads(other["report"]) if other["report"] else None)
            if current == study_uid:
                continue
            known = moments.get(current) if current is not None else None
            if known is not None and not known.is_before(moment):
                continue  # it is compared with a study closer to it than this one
            reason = ("compared again: an earlier study of this patient "
                      f"({_day(moment)}) arrived after it")
            self.studies.add_event(other["study_uid"], "prior", reason)
            self.studies.reanalyse(other["study_uid"], reason)
            log.info("event=prior_arrived_late study=%s prior=%s", other["study_uid"],
                     study_uid)
            self.wake()

    # --- the PACS search ----------------------------------------------------------------------

    def start(self) -> None:
        if self.peer is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prior-search", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._searches.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while (study_uid := self._searches.get()) is not None:
            try:
                self.search(study_uid)
            except Exception:  # a search that breaks costs its comparison, nothing else
                log.exception("event=prior_search_failed study=%s", study_uid)
        self.studies.db.close()
        self.ingestor.studies.db.close()

    def search(self, study_uid: str) -> None:
        """Ask the PACS for the patient's most recent earlier study; keep its marrownode
        report as the prior and re-assess, or fetch its MR images to analyse them."""
        peer = self.peer
        row = self.studies.study(study_uid)
        patient = Patient.of(row) if row else None
        day = moment_of(row).day() if row else None
        if peer is None or row is None or patient is None or day is None:
            return
        moment = moment_of(row)
        since = day - timedelta(days=round(365.25 * self.settings.priors.look_back_years))
        started = time.monotonic()

        def earlier(found: StudyFound) -> bool:
            return found.study_uid != study_uid and StudyMoment(
                found.study_date, found.study_time).is_before(moment)

        result = search_prior(peer.host, peer.port, peer.ae_title, self.settings.node.ae_title,
                              patient.patient_id, patient.issuer,
                              f"{since:%Y%m%d}-{day:%Y%m%d}", earlier,
                              self.settings.priors.timeout_seconds)
        prior = prior_from_srs(result.reports, PriorSource.PACS) if result.reports else None
        log.info("event=prior_search study=%s peer=%s studies=%d chosen=%s reports=%d "
                 "seconds=%.1f%s", study_uid, peer.name, len(result.studies),
                 result.chosen.study_uid if result.chosen else "none", len(result.reports),
                 time.monotonic() - started,
                 f" error={result.error.replace(' ', '_')}" if result.error else "")
        if prior is not None:
            self.studies.keep_prior(study_uid, prior)
            reason = (f"compared with the patient's earlier study of {_day(moment_of(prior))} "
                      "found in the PACS: a new report and summary follow")
            self.studies.add_event(study_uid, "prior", reason)
            self.studies.reanalyse(study_uid, reason)
            self.wake()
        elif result.chosen is not None:  # no report of ours: analyse its images here
            got = retrieve_study(result.chosen.study_uid, peer.host, peer.port, peer.ae_title,
                                 self.settings.node.ae_title,
                                 lambda encoded: store_encoded(self.ingestor, encoded),
                                 timeout=self.settings.priors.timeout_seconds)
            self.studies.add_event(study_uid, "prior", f"the patient's earlier study has no "
                                   f"marrownode report in the PACS: {got.stored} of its images "
                                   "retrieved to analyse; this study is compared once it is")
            self.wake()


def _day(moment: StudyMoment) -> str:
    date = moment.study_date
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) >= 8 else "undated"
