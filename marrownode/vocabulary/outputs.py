"""The kinds of object the node writes (report.json's outputs[].kind)."""

from __future__ import annotations

from enum import StrEnum


class OutputKind(StrEnum):
    """One result object's kind."""

    PARAMETRIC_MAP = "parametric_map"
    DERIVED_MR = "derived_mr"
    OVERLAY = "overlay"
    SEGMENTATION = "segmentation"
    SR = "sr"
    FAILURE_NOTE = "failure_note"
    SUMMARY = "summary"  # the marrow summary page (Secondary Capture), first in the study
