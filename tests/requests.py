"""Measurement requests as viewers write them, for tests: a TID 1500 SR around given ROI
groups (OHIF, 3D Slicer and highdicom build them this way)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes


def roi_report(groups: Sequence, evidence: Sequence[Dataset], series_number: int = 100,
               manufacturer: str = "viewer") -> hd.sr.Comprehensive3DSR:
    """A reader's measurement report holding the planar ROI groups."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name="Reader^Radiology"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.MRIUnspecifiedBodyRegion, imaging_measurements=list(groups))
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence), content=report[0], series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=manufacturer)
