"""The prior from the node's own SR, when the node no longer holds the prior's report (a new
node, or retention removed it): the SR is the node's memory in the PACS. Reads only what the
comparison needs (results/sr.py and sr_follow_up.py write it): per vertebra group its name,
centroid and medians; per focus group its site, centroid, volume and Tracking UID; the set's
pattern. Groups of foci a follow-up found resolved are not foci of that study."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from marrownode.dixon.header import MARROWNODE_MANUFACTURER
from marrownode.report_shape import (
    ObjectReference,
    PriorBodyShape,
    PriorFocusShape,
    PriorSetShape,
    PriorShape,
)
from marrownode.vocabulary import Pattern, PriorSource

TRACKING_IDENTIFIER, TRACKING_UID, FINDING = "112039", "112040", "121071"
MEASUREMENT_GROUP, VOLUME, FAT_FRACTION = "125007", "118565006", "129100"
SIGNAL_LOSS, MARROW_PATTERN, CHANGE = "MN001", "MN012", "MN401"
CENTROID = ("MN421", "MN422", "MN423")
LESION = "52988006"
RESOLVED = "MN406"
#: The pattern codes of results/sr.py, read back (a standard code or ours).
PATTERN_BY_MEANING = {p.value.replace("_", " "): p for p in Pattern}


def is_marrownode_report(dataset: Dataset) -> bool:
    """An SR written by marrownode (not a measurement request or another system's SR)."""
    return (str(dataset.get("Manufacturer", "")).strip().lower() == MARROWNODE_MANUFACTURER
            and str(dataset.get("Modality", "")) == "SR")


def _items(node: Any) -> Iterator[Dataset]:
    yield from node.get("ContentSequence", [])


def _concept(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeValue) if names else ""


def _code(item: Dataset) -> tuple[str, str]:
    codes = item.get("ConceptCodeSequence")
    return (str(codes[0].CodeValue), str(codes[0].CodeMeaning)) if codes else ("", "")


#: A number read from a peer's object is taken only when finite and within this (mm, mm3, %):
#: a damaged or hostile SR must not carry NaN or absurd positions into an alignment.
MAX_MAGNITUDE = 1e7


def _number(item: Dataset) -> float | None:
    values = item.get("MeasuredValueSequence")
    try:
        value = float(values[0].NumericValue) if values else None
    except (TypeError, ValueError, AttributeError, IndexError):
        return None
    return value if value is not None and math.isfinite(value) and abs(
        value) <= MAX_MAGNITUDE else None


def _groups(sr: Dataset) -> Iterator[Dataset]:
    for container in _items(sr):
        for item in _items(container):
            if _concept(item) == MEASUREMENT_GROUP:
                yield item


def _read_group(group: Dataset) -> dict[str, Any]:
    """A measurement group's items by concept (first NUM wins; our SR writes each once)."""
    found: dict[str, Any] = {}
    for item in _items(group):
        concept, kind = _concept(item), str(item.get("ValueType", ""))
        if kind == "TEXT":
            found.setdefault(concept, str(item.TextValue))
        elif kind == "UIDREF":
            found.setdefault(concept, str(item.UID))
        elif kind == "CODE":
            found.setdefault(concept, _code(item))
        elif kind == "NUM":
            found.setdefault(concept, _number(item))
    return found


def _site(identifier: str) -> str | None:
    """'Focus 2 in L3' -> 'L3'; 'L3 (V3)' -> 'L3'; 'V3' -> 'V3'."""
    if " in " in identifier:
        return identifier.rsplit(" in ", 1)[1].strip() or None
    return identifier.split(" (", 1)[0].strip() or None


def set_from_sr(sr: Dataset) -> PriorSetShape:
    """One set's vertebrae, foci and pattern from its SR."""
    vertebrae: list[PriorBodyShape] = []
    foci: list[PriorFocusShape] = []
    pattern = Pattern.NOT_ASSESSED
    for group in _groups(sr):
        values = _read_group(group)
        identifier = str(values.get(TRACKING_IDENTIFIER, ""))
        centroid = [values.get(code) for code in CENTROID]
        if identifier.startswith("Dixon set"):
            meaning = str(values.get(MARROW_PATTERN, ("", ""))[1]).lower().split(" (")[0]
            pattern = PATTERN_BY_MEANING.get(meaning, pattern)
            continue
        if any(c is None for c in centroid):
            continue  # written before centroids were: nothing to align or match with
        point = [float(c) for c in centroid if c is not None]
        if values.get(FINDING, ("", ""))[0] == LESION:
            if (values.get(CHANGE, ("", ""))[0] == RESOLVED or values.get(VOLUME) is None
                    or values[VOLUME] < 0):
                continue
            foci.append({"site": _site(identifier), "centroid_patient_mm": point,
                         "volume_mm3": float(values[VOLUME]),
                         "tracking_uid": str(values.get(TRACKING_UID, ""))})
        else:
            vertebrae.append({"name": _site(identifier) or identifier,
                              "centroid_patient_mm": point,
                              "signal_loss_percent_median": values.get(SIGNAL_LOSS),
                              "fat_fraction_percent_median": values.get(FAT_FRACTION)})
    words = str(sr.get("SeriesDescription", "")).split()
    return {"orientation": words[1] if len(words) > 1 else "", "pattern": pattern,
            "vertebrae": vertebrae, "foci": foci}


def prior_from_srs(reports: list[Dataset], source: PriorSource) -> PriorShape | None:
    """The prior study from its marrownode SRs (one per set); None when there is none."""
    ours = [sr for sr in reports if is_marrownode_report(sr)]
    if not ours:
        return None
    first = ours[0]
    reference: ObjectReference = {
        "study_instance_uid": str(first.StudyInstanceUID),
        "series_instance_uid": str(first.SeriesInstanceUID),
        "sop_class_uid": str(first.SOPClassUID), "sop_instance_uid": str(first.SOPInstanceUID)}
    return {"study_instance_uid": str(first.StudyInstanceUID),
            "study_date": str(first.get("StudyDate", "")),
            "study_time": str(first.get("StudyTime", "")), "source": source,
            "sets": [set_from_sr(sr) for sr in ours], "report": reference}
