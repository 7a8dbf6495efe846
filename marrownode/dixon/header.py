"""The header facts the Dixon logic needs, read once per instance and kept in the index.

They are summarised after receipt, when the assembler first looks at a study (not on the
acknowledgement path, which only needs the UIDs).

summarise() turns a dataset (without pixel data) into a plain JSON-able dict with one entry per
frame, so classification, pairing and completion work from the index alone, without reopening
files. Enhanced (multi-frame) MR is flattened: every frame gets its own position, echo time and
frame type from the functional groups.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

PHILIPS_CREATOR = "Philips MR Imaging DD 001"
MARROWNODE_MANUFACTURER = "marrownode"


def _floats(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        try:
            return [float(v) for v in value]
        except (TypeError, ValueError):
            return None
    try:
        return [float(value)]
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    values = _floats(value)
    return values[0] if values else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple | MultiValue):
        return [str(v).strip() for v in value]
    text = str(value).strip()
    return [t.strip() for t in text.split("\\")] if text else []


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _first_item(dataset: Dataset | None, keyword: str) -> Dataset | None:
    if dataset is None:
        return None
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def _philips_type(dataset: Dataset) -> str | None:
    """Philips per-image type (2005,xx11): W, F, IP, OP; stripped by most anonymisers."""
    try:
        block = dataset.private_block(0x2005, PHILIPS_CREATOR)
        element = block[0x11]
    except (KeyError, ValueError):
        return None
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = _text(value).upper()
    return text or None


def _philips_frame_type(frame_group: Dataset) -> str | None:
    """Philips Enhanced MR per-frame private item (2005,140F) carries the same (2005,xx11)."""
    sequence = frame_group.get((0x2005, 0x140F))
    if sequence is None or not getattr(sequence, "value", None):
        return None
    try:
        return _philips_type(sequence.value[0])
    except (AttributeError, IndexError, TypeError):
        return None


#: Enhanced MR's EchoPulseSequence values, as the ScanningSequence terms classic MR uses.
_ECHO_PULSE_AS_SCANNING = {"GRADIENT": ["GR"], "SPIN": ["SE"], "BOTH": ["GR", "SE"]}


def _complex_component(stated: Any, image_type: list[str]) -> str:
    """MAGNITUDE, PHASE, REAL, IMAGINARY or MIXED: ComplexImageComponent when stated, else
    value 3 of Image/Frame Type (Siemens 'P', Philips 'P_FFE'); '' when neither says."""
    text = _text(stated).upper()
    if text:
        return text
    third = image_type[2].upper() if len(image_type) > 2 else ""
    for prefix, component in (("P", "PHASE"), ("R", "REAL"), ("I", "IMAGINARY"),
                              ("M", "MAGNITUDE")):
        if third == prefix or third.startswith(prefix + "_"):
            return component
    return ""


def _frame_from_groups(shared: Dataset | None, per_frame: Dataset | None) -> dict[str, Any]:
    def group(keyword: str) -> Dataset | None:
        return _first_item(per_frame, keyword) or _first_item(shared, keyword)

    position = group("PlanePositionSequence")
    orientation = group("PlaneOrientationSequence")
    measures = group("PixelMeasuresSequence")
    echo = group("MREchoSequence")
    frame_type = group("MRImageFrameTypeSequence")
    content = _first_item(per_frame, "FrameContentSequence")
    # Legacy Converted Enhanced MR keeps each classic image's attributes unassigned.
    converted = (_first_item(per_frame, "UnassignedPerFrameConvertedAttributesSequence")
                 or _first_item(shared, "UnassignedSharedConvertedAttributesSequence"))
    if converted is not None and echo is None and frame_type is None:
        return _frame_from_converted(position, orientation, measures, converted, content)
    return {
        "position": _floats(position.get("ImagePositionPatient")) if position else None,
        "orientation": _floats(orientation.get("ImageOrientationPatient")) if orientation else None,
        "pixel_spacing": _floats(measures.get("PixelSpacing")) if measures else None,
        "slice_thickness": _float(measures.get("SliceThickness")) if measures else None,
        "echo_time": _float(echo.get("EffectiveEchoTime")) if echo else None,
        "echo_number": None,
        "frame_type": _strings(frame_type.get("FrameType")) if frame_type else [],
        "complex_component": _complex_component(
            frame_type.get("ComplexImageComponent"),
            _strings(frame_type.get("FrameType"))) if frame_type else "",
        "private_type": _philips_frame_type(per_frame) if per_frame is not None else None,
        "stack_position": _int(content.get("InStackPositionNumber")) if content else None,
    }


def _frame_from_converted(position: Dataset | None, orientation: Dataset | None,
                          measures: Dataset | None, converted: Dataset,
                          content: Dataset | None) -> dict[str, Any]:
    """A Legacy Converted frame: geometry from the functional groups, echo time and labels
    from the classic image's converted attributes."""
    image_type = _strings(converted.get("ImageType"))
    echo_numbers = _floats(converted.get("EchoNumbers"))
    return {
        "position": _floats(position.get("ImagePositionPatient")) if position else None,
        "orientation": _floats(orientation.get("ImageOrientationPatient")) if orientation else None,
        "pixel_spacing": _floats(measures.get("PixelSpacing")) if measures else None,
        "slice_thickness": _float(measures.get("SliceThickness")) if measures else None,
        "echo_time": _float(converted.get("EchoTime")),
        "echo_number": int(echo_numbers[0]) if echo_numbers else None,
        "frame_type": image_type,
        "complex_component": _complex_component(converted.get("ComplexImageComponent"),
                                                image_type),
        "private_type": None,
        "stack_position": _int(content.get("InStackPositionNumber")) if content else None,
    }


def _contrast_agent(dataset: Dataset) -> str:
    """Contrast/Bolus Agent, or the agent's code meaning (Enhanced MR's Contrast/Bolus Agent
    Sequence); '' when the header names none."""
    text = _text(dataset.get("ContrastBolusAgent"))
    if text:
        return text
    item = _first_item(dataset, "ContrastBolusAgentSequence")
    return _text(item.get("CodeMeaning")) if item is not None else ""


def summarise(dataset: Dataset) -> dict[str, Any]:
    """Header facts of one instance, one entry in 'frames' per frame."""
    number_of_frames = _int(dataset.get("NumberOfFrames")) or 1
    summary: dict[str, Any] = {
        "study_uid": _text(dataset.get("StudyInstanceUID")),
        "accession_number": _text(dataset.get("AccessionNumber")),
        "study_date": _text(dataset.get("StudyDate")),
        "study_description": _text(dataset.get("StudyDescription")),
        "patient_name": _text(dataset.get("PatientName")),
        # Who the study belongs to, for finding the patient's earlier study (never logged)
        "patient_id": _text(dataset.get("PatientID")),
        "issuer_of_patient_id": _text(dataset.get("IssuerOfPatientID")),
        "study_time": _text(dataset.get("StudyTime")),
        "series_uid": _text(dataset.get("SeriesInstanceUID")),
        "sop_instance_uid": _text(dataset.get("SOPInstanceUID")),
        "sop_class_uid": _text(dataset.get("SOPClassUID")),
        "modality": _text(dataset.get("Modality")),
        "series_number": _int(dataset.get("SeriesNumber")),
        "instance_number": _int(dataset.get("InstanceNumber")),
        "series_description": _text(dataset.get("SeriesDescription")),
        "protocol_name": _text(dataset.get("ProtocolName")),
        "manufacturer": _text(dataset.get("Manufacturer")),
        "image_type": _strings(dataset.get("ImageType")),
        "scan_options": _strings(dataset.get("ScanOptions")),
        "scanning_sequence": _strings(dataset.get("ScanningSequence")),
        "imaging_frequency": _float(dataset.get("ImagingFrequency")),
        "magnetic_field_strength": _float(dataset.get("MagneticFieldStrength")),
        "images_in_acquisition": _int(dataset.get("ImagesInAcquisition")),
        "acquisition_number": _int(dataset.get("AcquisitionNumber")),
        "number_of_frames": number_of_frames,
        "frame_of_reference_uid": _text(dataset.get("FrameOfReferenceUID")),
        "rows": _int(dataset.get("Rows")),
        "columns": _int(dataset.get("Columns")),
        # What tells a post-contrast or a fat-suppressed fluid-sensitive series (companions.py)
        "contrast_agent": _contrast_agent(dataset),
        "inversion_time": _float(dataset.get("InversionTime")),
        "repetition_time": _float(dataset.get("RepetitionTime")),
        "series_time": _text(dataset.get("SeriesTime")),
        "acquisition_time": _text(dataset.get("AcquisitionTime")),
        "sequence_name": _text(dataset.get("SequenceName")),
    }
    if "PerFrameFunctionalGroupsSequence" in dataset or "SharedFunctionalGroupsSequence" in dataset:
        shared = _first_item(dataset, "SharedFunctionalGroupsSequence")
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
        frames = [
            _frame_from_groups(shared, per_frame[i] if i < len(per_frame) else None)
            for i in range(number_of_frames)
        ]
        # Enhanced MR states fat suppression in SpectrallySelectedSuppression (FAT, ...).
        modifier = _first_item(shared, "MRModifierSequence") or Dataset()
        summary["spectral_suppression"] = _text(
            dataset.get("SpectrallySelectedSuppression")
        ) or _text(modifier.get("SpectrallySelectedSuppression"))
        summary["scanning_sequence"] = summary["scanning_sequence"] or [
            term for value in _strings(dataset.get("EchoPulseSequence"))
            for term in _ECHO_PULSE_AS_SCANNING.get(value.upper(), [value])]
        # ... and inversion recovery with its inversion time (a STIR) in the MR Modifier group.
        if _text(modifier.get("InversionRecovery")).upper() == "YES":
            if "IR" not in summary["scanning_sequence"]:
                summary["scanning_sequence"] = [*summary["scanning_sequence"], "IR"]
            summary["inversion_time"] = summary["inversion_time"] or _float(
                modifier.get("InversionTimes"))
    else:
        echo_numbers = _floats(dataset.get("EchoNumbers"))
        frames = [
            {
                "position": _floats(dataset.get("ImagePositionPatient")),
                "orientation": _floats(dataset.get("ImageOrientationPatient")),
                "pixel_spacing": _floats(dataset.get("PixelSpacing")),
                "slice_thickness": _float(dataset.get("SliceThickness")),
                "echo_time": _float(dataset.get("EchoTime")),
                "echo_number": int(echo_numbers[0]) if echo_numbers else None,
                "frame_type": [],
                "complex_component": _complex_component(
                    dataset.get("ComplexImageComponent"), _strings(dataset.get("ImageType"))),
                "private_type": _philips_type(dataset),
                "stack_position": None,
            }
        ]
    summary["frames"] = frames
    return summary
