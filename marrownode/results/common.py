"""What every result object shares: source geometry, exact patient/study copies, identity."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code

from marrownode import __version__
from marrownode.uids import derived_uid
from marrownode.vocabulary.anatomy import level_code

MANUFACTURER = "marrownode"
MODEL_NAME = "marrownode chemical-shift marrow analysis"

#: Copied element by element from the source, so names in any character set survive unchanged.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence", "PatientBirthDate", "PatientSex", "PatientAge", "PatientSize",
    "PatientWeight", "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
)


@dataclass(frozen=True)
class SourcePlane:
    """One source image plane that a result slice is derived from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None  # 1-based, for multi-frame sources
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None


@dataclass(frozen=True)
class SourceSeries:
    """The in-phase stack the results are registered to, plus the opposed-phase planes."""

    reference: Dataset  # first in-phase source: patient, study, frame of reference, equipment
    datasets: Sequence[Dataset]  # unique in-phase source objects
    planes: Sequence[SourcePlane]
    opposed_planes: Sequence[SourcePlane]
    #: When these results were made (local time, one instant for all of a set's objects).
    created: datetime = field(default_factory=datetime.now)

    @property
    def content_date_time(self) -> tuple[str, str]:
        """Instance Creation, Series and Content Date/Time: when the results were made (a
        re-run gives the same UIDs, and says when it ran)."""
        return creation_date_time(self.created)


VERTEBRAL_BODY = Code("280717001", "SCT", "Vertebral body")


def level_concept(level: str | None) -> Code | None:
    """A named level as a coded concept (CID 7603; the sacrum for S1...), None when unnamed:
    the SR's finding site and the SEG's segment type say the same."""
    coded = level_code(level)
    return Code(coded[0], "SCT", coded[1]) if coded else None


def creation_date_time(moment: datetime) -> tuple[str, str]:
    """DICOM DA and TM of the moment an object was made."""
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")


#: Functional groups highdicom reads from the shared item of a multi-frame source when it
#: derives an object from it; a source may carry them per frame, as the standard allows.
SHARED_FOR_HIGHDICOM = ("PixelMeasuresSequence", "PlaneOrientationSequence")


def with_shared_groups(source: Dataset) -> Dataset:
    """A multi-frame source as highdicom needs it: the groups of SHARED_FOR_HIGHDICOM in the
    shared item, taken from the first frame where the source states them per frame (as
    Philips and Siemens XA Enhanced MR do). A shallow copy; the source is left as received.
    Only for a stack, whose frames share one grid and orientation (the pairing has left out
    stacks whose frames differ)."""
    shared = source.get("SharedFunctionalGroupsSequence")
    per_frame = source.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return source
    missing = [keyword for keyword in SHARED_FOR_HIGHDICOM
               if (not shared or keyword not in shared[0]) and keyword in per_frame[0]]
    if not missing:
        return source
    copied = copy.copy(source)
    shared_item = copy.deepcopy(shared[0]) if shared else Dataset()
    for keyword in missing:
        setattr(shared_item, keyword, copy.deepcopy(per_frame[0][keyword].value))
    copied.SharedFunctionalGroupsSequence = [shared_item]
    return copied


def copy_patient_study(target: Dataset, source: Dataset) -> None:
    """Patient and study modules exactly as the source has them (character set included)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])
        elif keyword in target and keyword not in ("StudyInstanceUID",):
            del target[keyword]


def enhanced_identity(series_uid: str, series_number: int, sop_uid: str) -> dict[str, Any]:
    """The identity and equipment arguments every multi-frame result (highdicom's Parametric
    Map, Segmentation) is built with."""
    return {"series_instance_uid": series_uid, "series_number": series_number,
            "sop_instance_uid": sop_uid, "instance_number": 1, "manufacturer": MANUFACTURER,
            "manufacturer_model_name": MODEL_NAME, "software_versions": __version__,
            "device_serial_number": "0"}


def derive_dimension_organization(dataset: Dataset, uid_root: str) -> None:
    """highdicom draws the Dimension Organization UID at random; derive it from the instance so
    the same input gives the same bytes."""
    if "DimensionOrganizationSequence" not in dataset:
        return
    uid = derived_uid(uid_root, dataset.SOPInstanceUID, "dimension-organization")
    for item in dataset.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = uid
    for item in dataset.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid


def stamp(target: Dataset, sources: SourceSeries, series_description: str) -> None:
    """Identity and deterministic dates shared by all outputs."""
    date, time = sources.content_date_time
    for prefix in ("InstanceCreation", "Content", "Series"):
        setattr(target, f"{prefix}Date", date)
        setattr(target, f"{prefix}Time", time)
    # highdicom stamps its own "now" into these: one instant for the whole set.
    for item in target.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time.split(".")[0]
    if "TimeOfSecondaryCapture" in target:
        target.DateOfSecondaryCapture, target.TimeOfSecondaryCapture = date, time
    target.Manufacturer = MANUFACTURER
    target.ManufacturerModelName = MODEL_NAME
    target.SoftwareVersions = __version__
    target.SeriesDescription = series_description[:64]
    if "BodyPartExamined" in sources.reference:
        target.BodyPartExamined = sources.reference.BodyPartExamined
    if not target.get("BodyPartExamined") and "Laterality" not in target:
        # Without a body part nobody can tell whether it is paired: Laterality (type 2C) is
        # then present and empty ("unknown"), as the General Series module allows.
        target.Laterality = ""
    copy_patient_study(target, sources.reference)


def _replace_values(dataset: Dataset, **values: Any) -> None:
    """Set each keyword to a *new* element: pydicom's setattr changes an existing element in
    place, which would change every sibling that shares it."""
    for keyword, value in values.items():
        if keyword in dataset:
            del dataset[keyword]
        setattr(dataset, keyword, value)


def sibling_instance(template: Dataset, sop_instance_uid: str, **values: Any) -> Dataset:
    """Another instance of the template's series, without building and validating it again.

    The new dataset shares the template's elements (never mutated: see _replace_values) and has
    its own file meta, SOP Instance UID and the given values. Building a slice this way costs a
    fraction of a highdicom constructor, which checks the whole IOD every time.
    """
    dataset = Dataset()
    dataset.update(template)
    meta = FileMetaDataset()
    meta.update(template.file_meta)
    _replace_values(meta, MediaStorageSOPInstanceUID=sop_instance_uid)
    dataset.file_meta = meta
    _replace_values(dataset, SOPInstanceUID=sop_instance_uid, **values)
    return dataset
