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

from pydicom import config as pydicom_config
from pydicom import hooks as pydicom_hooks
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.values import convert_value

PHILIPS_CREATOR = "Philips MR Imaging DD 001"
MARROWNODE_MANUFACTURER = "marrownode"


#: VRs whose value pydicom converts from the bytes alone: not corrected afterwards (ambiguous
#: VRs), nor read as a sequence.
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "US", "SS", "UL",
                        "SL", "FL", "FD"})
#: ... and those it decodes with the data set's character set (names and text).
_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: Decoded with the default character set whatever the data set says (pydicom does so).
_SPECIFIC_CHARACTER_SET = 0x00080005


def _value(dataset: Dataset, keyword: str) -> Any:
    """dataset.get(keyword): the same value, converted by pydicom's own convert_value with
    the encodings pydicom would use, but without the DataElement pydicom builds and keeps for
    each element first read (most of reading a header's summary, which every received
    instance pays). Sequences and elements of other VRs, implicit-VR ones (no VR in the
    file), deferred ones, text of a data set without its character set known, and any that
    pydicom would treat otherwise (customised hooks, a conversion that fails) take pydicom's
    own path."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return dataset.get(keyword)
    element = dataset.get_item(tag, keep_deferred=True)
    if element is None:
        return None
    if (not isinstance(element, RawDataElement) or element.value is None
            or pydicom_config.data_element_callback is not None
            or pydicom_hooks.hooks.raw_element_value is not pydicom_hooks.raw_element_value):
        return dataset.get(keyword)
    encodings = None
    if element.VR in _TEXT_VRS and tag != _SPECIFIC_CHARACTER_SET:
        encodings = dataset.original_character_set  # what pydicom decodes it with, when set
        if not encodings:
            return dataset.get(keyword)
    elif element.VR not in _PLAIN_VRS:
        return dataset.get(keyword)
    try:
        return convert_value(element.VR, element, encodings)
    except Exception:  # pydicom's path decides: a warning and UN, or its error
        return dataset.get(keyword)


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


def _frame_geometry(position: Dataset | None, orientation: Dataset | None,
                    measures: Dataset | None) -> dict[str, Any]:
    """A functional-groups frame's position, orientation, pixel spacing and thickness."""
    return {
        "position": _floats(_value(position, "ImagePositionPatient")) if position else None,
        "orientation": (_floats(_value(orientation, "ImageOrientationPatient"))
                        if orientation else None),
        "pixel_spacing": _floats(_value(measures, "PixelSpacing")) if measures else None,
        "slice_thickness": _float(_value(measures, "SliceThickness")) if measures else None,
    }


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
    frame_types = _strings(_value(frame_type, "FrameType")) if frame_type else []
    return {
        **_frame_geometry(position, orientation, measures),
        "echo_time": _float(_value(echo, "EffectiveEchoTime")) if echo else None,
        "echo_number": None,
        "frame_type": frame_types,
        "complex_component": _complex_component(
            _value(frame_type, "ComplexImageComponent"), frame_types) if frame_type else "",
        "private_type": _philips_frame_type(per_frame) if per_frame is not None else None,
        "stack_position": _int(_value(content, "InStackPositionNumber")) if content else None,
    }


def _frame_from_converted(position: Dataset | None, orientation: Dataset | None,
                          measures: Dataset | None, converted: Dataset,
                          content: Dataset | None) -> dict[str, Any]:
    """A Legacy Converted frame: geometry from the functional groups, echo time and labels
    from the classic image's converted attributes."""
    image_type = _strings(_value(converted, "ImageType"))
    echo_numbers = _floats(_value(converted, "EchoNumbers"))
    return {
        **_frame_geometry(position, orientation, measures),
        "echo_time": _float(_value(converted, "EchoTime")),
        "echo_number": int(echo_numbers[0]) if echo_numbers else None,
        "frame_type": image_type,
        "complex_component": _complex_component(_value(converted, "ComplexImageComponent"),
                                                image_type),
        "private_type": None,
        "stack_position": _int(_value(content, "InStackPositionNumber")) if content else None,
    }


def _contrast_agent(dataset: Dataset) -> str:
    """Contrast/Bolus Agent, or the agent's code meaning (Enhanced MR's Contrast/Bolus Agent
    Sequence); '' when the header names none."""
    text = _text(_value(dataset, "ContrastBolusAgent"))
    if text:
        return text
    item = _first_item(dataset, "ContrastBolusAgentSequence")
    return _text(_value(item, "CodeMeaning")) if item is not None else ""


def summarise(dataset: Dataset) -> dict[str, Any]:
    """Header facts of one instance, one entry in 'frames' per frame."""
    number_of_frames = _int(_value(dataset, "NumberOfFrames")) or 1
    summary: dict[str, Any] = {
        "study_uid": _text(_value(dataset, "StudyInstanceUID")),
        "accession_number": _text(_value(dataset, "AccessionNumber")),
        "study_date": _text(_value(dataset, "StudyDate")),
        "study_description": _text(_value(dataset, "StudyDescription")),
        "patient_name": _text(_value(dataset, "PatientName")),
        # Who the study belongs to, for finding the patient's earlier study (never logged)
        "patient_id": _text(_value(dataset, "PatientID")),
        "issuer_of_patient_id": _text(_value(dataset, "IssuerOfPatientID")),
        "study_time": _text(_value(dataset, "StudyTime")),
        "series_uid": _text(_value(dataset, "SeriesInstanceUID")),
        "sop_instance_uid": _text(_value(dataset, "SOPInstanceUID")),
        "sop_class_uid": _text(_value(dataset, "SOPClassUID")),
        "modality": _text(_value(dataset, "Modality")),
        "series_number": _int(_value(dataset, "SeriesNumber")),
        "instance_number": _int(_value(dataset, "InstanceNumber")),
        "series_description": _text(_value(dataset, "SeriesDescription")),
        "protocol_name": _text(_value(dataset, "ProtocolName")),
        "manufacturer": _text(_value(dataset, "Manufacturer")),
        "image_type": _strings(_value(dataset, "ImageType")),
        "scan_options": _strings(_value(dataset, "ScanOptions")),
        "scanning_sequence": _strings(_value(dataset, "ScanningSequence")),
        "imaging_frequency": _float(_value(dataset, "ImagingFrequency")),
        "magnetic_field_strength": _float(_value(dataset, "MagneticFieldStrength")),
        "images_in_acquisition": _int(_value(dataset, "ImagesInAcquisition")),
        "acquisition_number": _int(_value(dataset, "AcquisitionNumber")),
        "number_of_frames": number_of_frames,
        "frame_of_reference_uid": _text(_value(dataset, "FrameOfReferenceUID")),
        "rows": _int(_value(dataset, "Rows")),
        "columns": _int(_value(dataset, "Columns")),
        # What tells a post-contrast or a fat-suppressed fluid-sensitive series (companions.py)
        "contrast_agent": _contrast_agent(dataset),
        "inversion_time": _float(_value(dataset, "InversionTime")),
        "repetition_time": _float(_value(dataset, "RepetitionTime")),
        "series_time": _text(_value(dataset, "SeriesTime")),
        "acquisition_time": _text(_value(dataset, "AcquisitionTime")),
        "sequence_name": _text(_value(dataset, "SequenceName")),
    }
    if "PerFrameFunctionalGroupsSequence" in dataset or "SharedFunctionalGroupsSequence" in dataset:
        shared = _first_item(dataset, "SharedFunctionalGroupsSequence")
        per_frame = _value(dataset, "PerFrameFunctionalGroupsSequence") or []
        frames = [
            _frame_from_groups(shared, per_frame[i] if i < len(per_frame) else None)
            for i in range(number_of_frames)
        ]
        # Enhanced MR states fat suppression in SpectrallySelectedSuppression (FAT, ...).
        modifier = _first_item(shared, "MRModifierSequence") or Dataset()
        summary["spectral_suppression"] = _text(
            _value(dataset, "SpectrallySelectedSuppression")
        ) or _text(_value(modifier, "SpectrallySelectedSuppression"))
        summary["scanning_sequence"] = summary["scanning_sequence"] or [
            term for value in _strings(_value(dataset, "EchoPulseSequence"))
            for term in _ECHO_PULSE_AS_SCANNING.get(value.upper(), [value])]
        # ... and inversion recovery with its inversion time (a STIR) in the MR Modifier group.
        if _text(_value(modifier, "InversionRecovery")).upper() == "YES":
            if "IR" not in summary["scanning_sequence"]:
                summary["scanning_sequence"] = [*summary["scanning_sequence"], "IR"]
            summary["inversion_time"] = summary["inversion_time"] or _float(
                _value(modifier, "InversionTimes"))
    else:
        echo_numbers = _floats(_value(dataset, "EchoNumbers"))
        frames = [
            {
                "position": _floats(_value(dataset, "ImagePositionPatient")),
                "orientation": _floats(_value(dataset, "ImageOrientationPatient")),
                "pixel_spacing": _floats(_value(dataset, "PixelSpacing")),
                "slice_thickness": _float(_value(dataset, "SliceThickness")),
                "echo_time": _float(_value(dataset, "EchoTime")),
                "echo_number": int(echo_numbers[0]) if echo_numbers else None,
                "frame_type": [],
                "complex_component": _complex_component(
                    _value(dataset, "ComplexImageComponent"), summary["image_type"]),
                "private_type": _philips_type(dataset),
                "stack_position": None,
            }
        ]
    summary["frames"] = frames
    return summary
