"""The SR answering a measurement request, written beside the sets' results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from marrownode.config import Settings, content_digest
from marrownode.report_shape import OutputEntry
from marrownode.results.answer_sr import build_answer_sr
from marrownode.results.encoding import write_dataset
from marrownode.uids import derived_uid
from marrownode.vocabulary import OutputKind

#: Answers to measurement requests: series numbers after the sets' results.
ANSWER_SERIES_OFFSET = 900


def write_answer(request: Dataset, measurements: list[dict[str, Any]], evidence: list[Dataset],
                 settings: Settings, out_dir: Path, index: int,
                 on_series: Callable[[list[OutputEntry]], None] | None = None,
                 ) -> list[OutputEntry]:
    """Build and write the SR answering one request; its report entries (kind 'sr').
    Its UIDs derive from the request and the content settings: the same request measured
    with the same settings gives the same answer UIDs."""
    root = settings.outputs.uid_root
    digest = content_digest(settings)
    series_uid = derived_uid(root, str(request.SOPInstanceUID), "answer", digest)
    number = settings.outputs.series_number_base + ANSWER_SERIES_OFFSET + index
    sr = build_answer_sr(request, measurements, evidence, series_uid=series_uid,
                         sop_uid=derived_uid(root, series_uid, "instance"), series_number=number,
                         uid_root=root, settings_digest=digest)
    path = out_dir / "requests" / f"{sr.SOPInstanceUID}.dcm"
    write_dataset(sr, path)
    entries: list[OutputEntry] = [{
        "kind": OutputKind.SR, "sop_class_uid": str(sr.SOPClassUID),
        "transfer_syntax_uid": str(sr.file_meta.TransferSyntaxUID),
        "sop_instance_uid": str(sr.SOPInstanceUID),
        "series_instance_uid": str(sr.SeriesInstanceUID), "series_number": number,
        "series_description": str(sr.SeriesDescription),
        "path": str(path.relative_to(out_dir)),
    }]
    if on_series is not None:
        on_series(entries)
    return entries
