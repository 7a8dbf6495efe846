"""What an analysis of a study starts from: its source instances (not our own results, not
requests), the settings digest they are analysed with, and the study's earlier reports."""

from __future__ import annotations

import hashlib
from typing import Any

from marrownode import ALGORITHM_VERSION
from marrownode.config import Settings, content_digest
from marrownode.dixon.header import MARROWNODE_MANUFACTURER
from marrownode.report_shape import OutputEntry, StudyShape
from marrownode.requests.read import request_kind
from marrownode.vocabulary import OutputKind


def input_digest(headers: list[dict[str, Any]], settings: Settings) -> str:
    """What an analysis of the study would start from: its source instances (our own results,
    sent back to us by a PACS rule, are not sources) and the settings that shape the results.
    The same digest as last time means the same results: nothing to analyse or send."""
    sources = sorted(h["sop_instance_uid"] for h in headers
                     if str(h.get("manufacturer", "")).strip().lower()
                     != MARROWNODE_MANUFACTURER)
    text = "\n".join([content_digest(settings), ALGORITHM_VERSION, *sources])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_request(header: dict[str, Any]) -> bool:
    """A measurement request object (SR, GSPS, SEG) that is not one of our own results."""
    return request_kind(str(header.get("sop_class_uid", ""))) is not None and str(
        header.get("manufacturer", "")).strip().lower() != MARROWNODE_MANUFACTURER


def earlier_reports(report: StudyShape | None) -> dict[str, list[OutputEntry]]:
    """Per set key, the SR entries of the study's last recorded analysis: a new analysis (other
    settings, more images) supersedes them and says so."""
    if not report:
        return {}
    return {dixon_set["key"]: [entry for entry in dixon_set["outputs"]
                               if entry["kind"] == OutputKind.SR]
            for dixon_set in report["dixon_sets"]}


def patient_fields(path: str) -> str:
    """Patient name and ID for the log, only when logging.include_phi is switched on."""
    from pydicom import dcmread

    dataset = dcmread(path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
    name = str(dataset.get("PatientName", "")).replace(" ", "_")
    return f" patient_name={name} patient_id={dataset.get('PatientID', '')}"
