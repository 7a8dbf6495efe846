"""C-GET of a study's MR images from a PACS (pynetdicom's SCU): when a measurement request
arrives after retention removed the images it is to be measured on.

The study's MR series are found with a C-FIND at series level, then fetched series by series
with C-GET offering the MR storage classes only (the Dixon series are MR; a PACS such as
Orthanc ends a whole C-GET at the first object it has no context for, so a study-level C-GET
would stop at the first SR). Each instance received goes to
on_instance (the node stores it like any received instance) and its answer is the C-STORE
status given back to the PACS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    EnhancedMRColorImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from marrownode.net.pynetdicom_adapter import scu_ae

log = logging.getLogger(__name__)

MR_CLASSES = (MRImageStorage, EnhancedMRImageStorage, EnhancedMRColorImageStorage,
              LegacyConvertedEnhancedMRImageStorage)
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLosslessSV1,
            JPEG2000Lossless]

#: (encoded data set with its file meta, SOP Class UID) -> C-STORE status for the PACS.
InstanceHandler = Callable[[bytes], int]


@dataclass(frozen=True)
class Retrieved:
    """How the retrieval went: instances stored, and the final C-GET status (None when no
    association was made)."""

    stored: int
    status: int | None
    error: str = ""


def retrieve_study(study_uid: str, host: str, port: int, called_aet: str, calling_aet: str,
                   on_instance: InstanceHandler, timeout: float = 60.0) -> Retrieved:
    """C-GET the study's MR instances from the peer."""
    ae = scu_ae(calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in MR_CLASSES:
        ae.add_requested_context(sop_class, SYNTAXES)
        roles.append(build_role(sop_class, scp_role=True))
    stored = [0]

    def store(event: evt.Event) -> int:
        try:
            status = on_instance(event.encoded_dataset())
        except Exception:  # the PACS gets a failure status; the node goes on
            log.exception("event=retrieved_instance_failed")
            return 0xA700
        if status == 0:
            stored[0] += 1
        return status

    association = ae.associate(host, port, ae_title=called_aet, ext_neg=roles,  # type: ignore[arg-type]
                               evt_handlers=[(evt.EVT_C_STORE, store)])
    if not association.is_established:
        return Retrieved(0, None, "no association")
    final: int | None = None
    try:
        for series_uid in _mr_series(association, study_uid):
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = series_uid
            for status, _ in association.send_c_get(query,
                                                    StudyRootQueryRetrieveInformationModelGet):
                if status and "Status" in status:
                    final = int(status.Status)
    finally:
        if association.is_established:
            association.release()
    return Retrieved(stored[0], final)


def series_query(study_uid: str, **keys: str) -> Dataset:
    """A series-level identifier of the study, matching on keys, returning the series UID."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def _mr_series(association: Any, study_uid: str) -> list[str]:
    """The study's MR series, by C-FIND at series level."""
    query = series_query(study_uid, Modality="MR")
    found = []
    for status, identifier in association.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind):
        if status and int(status.Status) in (0xFF00, 0xFF01) and identifier is not None:
            found.append(str(identifier.SeriesInstanceUID))
    return found
