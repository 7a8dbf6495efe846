"""The note that names partial results: when an analysis fails for good after part of its
results were already sent, the radiologist finds beside them, in the same study, a short SR
saying that the analysis failed, why, and which series are incomplete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code

from marrownode import __version__
from marrownode.report_shape import OutputEntry
from marrownode.results.common import (
    MANUFACTURER,
    MODEL_NAME,
    copy_patient_study,
    creation_date_time,
)
from marrownode.results.encoding import write_dataset
from marrownode.results.sr import SCHEME, SCHEME_NAME
from marrownode.uids import derived_uid
from marrownode.vocabulary import OutputKind

TITLE = Code("MN300", SCHEME, "marrownode analysis failed: partial results")
STATUS = Code("MN301", SCHEME, "Analysis status")
INCOMPLETE_SERIES = Code("MN302", SCHEME, "Incomplete result series")
SERIES_DESCRIPTION = "marrownode analysis FAILED: partial results"
#: Series number of the note, after the result series' base.
NOTE_SERIES_OFFSET = 99
#: Where the note is written, beside the result series.
FAILURE_NOTE_FOLDER = "failure-note"


@dataclass(frozen=True)
class PartialSeries:
    """A result series of the failed run that was already written (and maybe delivered)."""

    series_instance_uid: str
    description: str
    instances: int


def build_failure_note(reference: Dataset, reason: str, partial: Sequence[PartialSeries], *,
                       series_uid: str, sop_uid: str, series_number: int) -> Dataset:
    """A Comprehensive SR in the reference's study (patient and study copied) whose content
    says that the analysis failed, with the reason and the incomplete series."""
    items: list[hd.sr.ContentItem] = [hd.sr.TextContentItem(
        name=STATUS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        value=("The marrownode analysis of this study failed and will not be completed "
               "automatically: " + " ".join(reason.split()))[:1024])]
    items += [hd.sr.TextContentItem(
        name=INCOMPLETE_SERIES, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        value=(f"{series.description or 'result series'} ({series.instances} object(s), "
               f"series {series.series_instance_uid}): incomplete, do not read it as a "
               "marrownode analysis")[:1024]) for series in partial]
    container = hd.sr.ContainerContentItem(name=TITLE, template_id=None)
    container.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=[reference], content=container, series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = DicomSequence([scheme])  # type: ignore[assignment]
    date, time = creation_date_time(datetime.now())
    for prefix in ("InstanceCreation", "Content", "Series"):
        setattr(sr, f"{prefix}Date", date)
        setattr(sr, f"{prefix}Time", time)
    sr.ManufacturerModelName, sr.SoftwareVersions = MODEL_NAME, __version__
    sr.SeriesDescription = SERIES_DESCRIPTION
    copy_patient_study(sr, reference)
    return sr


def partial_series(paths: Sequence[str]) -> list[PartialSeries]:
    """The result files of a failed run, by series (files already gone are left out)."""
    found: dict[str, tuple[str, int]] = {}
    for path in paths:
        try:
            header = dcmread(path, stop_before_pixels=True,
                             specific_tags=["SeriesInstanceUID", "SeriesDescription"])
        except (OSError, ValueError):
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        description, count = found.get(uid, (str(header.get("SeriesDescription", "")), 0))
        found[uid] = (description, count + 1)
    return [PartialSeries(uid, description, count)
            for uid, (description, count) in sorted(found.items(), key=lambda i: i[1][0])]


def write_failure_note(source_path: str, reason: str, partial_paths: Sequence[str],
                       uid_root: str, series_number_base: int,
                       out_dir: str) -> list[OutputEntry]:
    """Build the note for the study of source_path, naming the series of partial_paths, and
    write it under out_dir; its outbox entries (none when no partial file is left). Its UIDs
    derive from the partial series, so the same failure gives one note."""
    partial = partial_series(partial_paths)
    if not partial:
        return []
    reference = dcmread(source_path, stop_before_pixels=True)
    key = "|".join(sorted(series.series_instance_uid for series in partial))
    series_uid = str(derived_uid(uid_root, reference.StudyInstanceUID, "failure-note", key))
    sop_uid = str(derived_uid(uid_root, series_uid, "failure-note-sr"))
    note = build_failure_note(reference, reason, partial, series_uid=series_uid, sop_uid=sop_uid,
                              series_number=series_number_base + NOTE_SERIES_OFFSET)
    path = Path(out_dir) / FAILURE_NOTE_FOLDER / f"{sop_uid}.dcm"
    write_dataset(note, path)
    return [{"kind": OutputKind.FAILURE_NOTE, "sop_class_uid": str(note.SOPClassUID),
             "sop_instance_uid": sop_uid, "series_instance_uid": series_uid,
             "transfer_syntax_uid": str(note.file_meta.TransferSyntaxUID),
             "path": str(path.relative_to(out_dir))}]
