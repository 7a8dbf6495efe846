"""The patient's earlier studies in the PACS (pynetdicom's SCU): C-FIND at study level by
Patient ID (and its issuer) within the look-back, then, for the most recent earlier study with
MR, C-FIND at series level for marrownode's own SR series and C-GET of those alone (the
node's measurements are its memory in the PACS). Everything on one association, bounded by a
deadline; the reports come back in memory (they are read, not stored as sources)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from marrownode.net.pynetdicom_adapter import scu_ae
from marrownode.net.retrieve import series_query

log = logging.getLogger(__name__)

SR_CLASSES = (Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage)
#: Our SR series describe themselves so: "marrownode <plane> chemical-shift report (SR)".
REPORT_DESCRIPTION = "marrownode*report*"
#: At most this many report objects are taken from one study (one per set; a few versions).
MAX_REPORTS = 32
PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class StudyFound:
    """A study of the patient in the PACS, as the study-level C-FIND answered."""

    study_uid: str
    study_date: str
    study_time: str
    issuer: str
    modalities: tuple[str, ...]


@dataclass
class PriorSearch:
    """What the search found: the patient's studies, and for the chosen one its marrownode
    reports (empty: it has none, its images may be analysed instead)."""

    studies: list[StudyFound] = field(default_factory=list)
    chosen: StudyFound | None = None
    reports: list[Dataset] = field(default_factory=list)
    error: str = ""


class Deadline:
    """The whole search ends at once when its time is up."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def check(self) -> None:
        if self.left() <= 0:
            raise TimeoutError("the search for the prior ran out of time")


def search_prior(host: str, port: int, called_aet: str, calling_aet: str, patient_id: str,
                 issuer: str, date_range: str, is_earlier: Any, timeout: float,
                 ) -> PriorSearch:
    """Find the patient's studies within date_range ('YYYYMMDD-YYYYMMDD'), choose the most
    recent one is_earlier(StudyFound) accepts that has MR, and fetch its marrownode SRs."""
    deadline = Deadline(timeout)
    ae = scu_ae(calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = min(timeout, 30.0)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in SR_CLASSES:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    roles = [build_role(sop_class, scp_role=True) for sop_class in SR_CLASSES]
    received: list[Dataset] = []

    def store(event: evt.Event) -> int:
        if len(received) >= MAX_REPORTS:
            return 0xA700  # out of resources: a study with more reports than any of ours
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        received.append(dataset)
        return 0x0000

    search = PriorSearch()
    association = ae.associate(host, port, ae_title=called_aet, ext_neg=roles,  # type: ignore[arg-type]
                               evt_handlers=[(evt.EVT_C_STORE, store)])
    if not association.is_established:
        search.error = "no association"
        return search
    try:
        search.studies = list(_studies(association, patient_id, issuer, date_range))
        deadline.check()
        earlier = sorted((s for s in search.studies if is_earlier(s) and "MR" in s.modalities),
                         key=lambda s: (s.study_date, s.study_time), reverse=True)
        if earlier:
            search.chosen = earlier[0]
            for series_uid in _report_series(association, search.chosen.study_uid):
                deadline.check()
                _get_series(association, search.chosen.study_uid, series_uid)
            search.reports = received
    except (TimeoutError, RuntimeError, ValueError) as exc:
        search.error = f"{type(exc).__name__}: {exc}"
    finally:
        if association.is_established:
            association.release()
    return search


def _answers(association: Any, query: Dataset) -> Iterator[Dataset]:
    for status, identifier in association.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind):
        if not status or "Status" not in status:
            raise RuntimeError("the C-FIND got no answer (association ended or timed out)")
        if int(status.Status) in PENDING and identifier is not None:
            yield identifier


def _studies(association: Any, patient_id: str, issuer: str,
             date_range: str) -> Iterator[StudyFound]:
    """The patient's studies in the range; the issuer is checked here as well (a PACS may not
    match on it), so another issuer's patient with the same number is never taken."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.IssuerOfPatientID = issuer
    query.StudyDate = date_range
    query.StudyTime = ""
    query.StudyInstanceUID = ""
    query.ModalitiesInStudy = ""
    for found in _answers(association, query):
        their_issuer = str(found.get("IssuerOfPatientID", "") or "")
        if str(found.get("PatientID", "")) != patient_id or their_issuer != issuer:
            continue
        value = found.get("ModalitiesInStudy")
        modalities = tuple(str(m) for m in (value if isinstance(value, MultiValue)
                                            else [value]) if m)
        yield StudyFound(str(found.StudyInstanceUID), str(found.get("StudyDate", "")),
                         str(found.get("StudyTime", "")), their_issuer, modalities)


def _report_series(association: Any, study_uid: str) -> list[str]:
    """The study's marrownode SR series."""
    query = series_query(study_uid, Modality="SR", SeriesDescription=REPORT_DESCRIPTION)
    return [str(found.SeriesInstanceUID) for found in _answers(association, query)
            if str(found.get("SeriesDescription", "")).startswith("marrownode")]


def _get_series(association: Any, study_uid: str, series_uid: str) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    for status, _ in association.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
        if not status or "Status" not in status:
            raise RuntimeError("the C-GET got no answer (association ended or timed out)")
