"""Echo-role classification of every image plane: in-phase, opposed-phase, water, fat,
fat-fraction (scanner map) or none, always with the reason.

Order of evidence (docs/domain.md §2-3): exact tokens in FrameType / ImageType (value 3 on), the
Philips private type, vendor naming conventions, and only then echo-time physics — for original
gradient-echo images without fat suppression that have a sibling echo on identical geometry.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from marrownode.dixon.header import MARROWNODE_MANUFACTURER
from marrownode.physics import GYROMAGNETIC_MHZ_PER_T, fat_water_shift_hz

PHASE_TOLERANCE_CYCLES = 0.15


class Role(StrEnum):
    IN_PHASE = "in_phase"
    OPPOSED_PHASE = "opposed_phase"
    WATER = "water"
    FAT = "fat"
    FAT_FRACTION = "fat_fraction"
    NONE = "none"


# Tested in this order: fat fraction and opposed before in-phase (docs/domain.md §3).
_TOKENS: tuple[tuple[Role, frozenset[str]], ...] = (
    (Role.FAT_FRACTION, frozenset({"FAT_FRACTION"})),
    (Role.OPPOSED_PHASE, frozenset({"OUT_PHASE", "OPP_PHASE", "OUT_OF_PHASE", "OP"})),
    (Role.IN_PHASE, frozenset({"IN_PHASE", "IP"})),
    (Role.WATER, frozenset({"WATER", "W"})),
    (Role.FAT, frozenset({"FAT", "F"})),
)
_PRIVATE = {"W": Role.WATER, "F": Role.FAT, "IP": Role.IN_PHASE, "OP": Role.OPPOSED_PHASE,
            "FF": Role.FAT_FRACTION}
_GE_PREFIX = {"water": Role.WATER, "fat": Role.FAT, "inphase": Role.IN_PHASE,
              "outphase": Role.OPPOSED_PHASE, "fatfrac": Role.FAT_FRACTION}
_SIEMENS_SUFFIX = {"opp": Role.OPPOSED_PHASE, "in": Role.IN_PHASE, "W": Role.WATER, "F": Role.FAT}
_FAT_SUPPRESSION_WORDS = frozenset({"FS", "FATSAT", "FAT_SAT", "SPAIR", "SPIR", "STIR", "CHESS",
                                    "FSAT", "FATSUP"})


@dataclass(frozen=True)
class Frame:
    """One image plane with the header facts classification and pairing need."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    frame_index: int | None
    modality: str
    manufacturer: str
    series_description: str
    series_number: int | None
    image_type: tuple[str, ...]
    frame_type: tuple[str, ...]
    private_type: str | None
    echo_time: float | None
    echo_number: int | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    rows: int | None
    columns: int | None
    frame_of_reference_uid: str
    imaging_frequency: float | None
    magnetic_field_strength: float | None
    scan_options: tuple[str, ...]
    scanning_sequence: tuple[str, ...]
    spectral_suppression: str
    images_in_acquisition: int | None
    number_of_frames: int
    slice_thickness: float | None = None
    complex_component: str = ""  # MAGNITUDE, PHASE, ... ('' when the header does not say)
    protocol_name: str = ""
    contrast_agent: str = ""  # Contrast/Bolus Agent ('' when the header names none)
    inversion_time: float | None = None
    repetition_time: float | None = None
    series_time: str = ""
    acquisition_time: str = ""
    sequence_name: str = ""

    @property
    def field_strength_t(self) -> float | None:
        """B0 from ImagingFrequency when present; MagneticFieldStrength is only nominal."""
        if self.imaging_frequency and self.imaging_frequency > 0:
            return self.imaging_frequency / GYROMAGNETIC_MHZ_PER_T
        strength = self.magnetic_field_strength
        if strength and strength > 0:
            return strength / 10000.0 if strength > 100 else strength
        return None


def frames_from_header(header: dict[str, Any]) -> list[Frame]:
    """Flatten an index header summary into one Frame per image plane."""
    frames = header.get("frames") or []
    multi = (header.get("number_of_frames") or 1) > 1 or len(frames) > 1

    def tup(value: Any) -> tuple[Any, ...] | None:
        return tuple(value) if value else None

    return [
        Frame(
            study_uid=header.get("study_uid", ""),
            series_uid=header.get("series_uid", ""),
            sop_instance_uid=header.get("sop_instance_uid", ""),
            frame_index=i if multi else None,
            modality=header.get("modality", ""),
            manufacturer=header.get("manufacturer", ""),
            series_description=header.get("series_description", ""),
            series_number=header.get("series_number"),
            image_type=tuple(header.get("image_type") or ()),
            frame_type=tuple(frame.get("frame_type") or ()),
            complex_component=frame.get("complex_component") or "",
            private_type=frame.get("private_type"),
            echo_time=frame.get("echo_time"),
            echo_number=frame.get("echo_number"),
            position=tup(frame.get("position")),
            orientation=tup(frame.get("orientation")),
            pixel_spacing=tup(frame.get("pixel_spacing")),
            rows=header.get("rows"),
            columns=header.get("columns"),
            frame_of_reference_uid=header.get("frame_of_reference_uid", ""),
            imaging_frequency=header.get("imaging_frequency"),
            magnetic_field_strength=header.get("magnetic_field_strength"),
            scan_options=tuple(header.get("scan_options") or ()),
            scanning_sequence=tuple(header.get("scanning_sequence") or ()),
            spectral_suppression=header.get("spectral_suppression", ""),
            images_in_acquisition=header.get("images_in_acquisition"),
            number_of_frames=header.get("number_of_frames") or 1,
            slice_thickness=frame.get("slice_thickness"),
            protocol_name=header.get("protocol_name", ""),
            contrast_agent=header.get("contrast_agent", ""),
            inversion_time=header.get("inversion_time"),
            repetition_time=header.get("repetition_time"),
            series_time=header.get("series_time", ""),
            acquisition_time=header.get("acquisition_time", ""),
            sequence_name=header.get("sequence_name", ""),
        )
        for i, frame in enumerate(frames)
    ]


@dataclass(frozen=True)
class Classified:
    frame: Frame
    role: Role
    reason: str
    evidence: str  # "tokens", "private", "naming", "echo_time" or "" for none


def _role_from_tokens(values: tuple[str, ...]) -> Role | None:
    tokens = {v.strip().upper() for v in values[2:]}
    for role, names in _TOKENS:
        if tokens & names:
            return role
    return None


def _role_from_naming(description: str) -> Role | None:
    text = description.strip()
    if ":" in text:
        prefix = re.sub(r"[\s_-]", "", text.split(":", 1)[0]).lower()
        if prefix in _GE_PREFIX:
            return _GE_PREFIX[prefix]
    tokens = [t for t in re.split(r"[_\s]+", text) if t]
    while tokens and tokens[-1].isdigit():
        tokens.pop()
    if len(tokens) >= 2:
        last = tokens[-1]
        if last in ("W", "F"):
            return _SIEMENS_SUFFIX[last]
        if last.lower() in ("opp", "in"):
            return _SIEMENS_SUFFIX[last.lower()]
    return None


def fat_suppressed(frame: Frame) -> str | None:
    """Why this image is fat-suppressed (the TE rule must not be applied), or None."""
    if "FS" in {o.upper() for o in frame.scan_options}:
        return "ScanOptions FS"
    if frame.spectral_suppression.upper() in ("FAT", "FAT_AND_WATER"):
        return f"SpectrallySelectedSuppression {frame.spectral_suppression}"
    words = {w.upper() for w in re.split(r"[^A-Za-z0-9_]+", frame.series_description) if w}
    hit = words & _FAT_SUPPRESSION_WORDS
    if hit:
        return f"description says {sorted(hit)[0]}"
    if "IR" in {s.upper() for s in frame.scanning_sequence} and "STIR" in words:
        return "STIR"
    return None


def phase_of_echo(echo_time_ms: float, field_strength_t: float) -> tuple[Role, float]:
    """Role by fat-water cycles at TE: fraction near 0 in phase, near 0.5 opposed."""
    cycles = echo_time_ms / 1000.0 * fat_water_shift_hz(field_strength_t)
    fraction = cycles % 1.0
    if min(fraction, 1.0 - fraction) <= PHASE_TOLERANCE_CYCLES:
        return Role.IN_PHASE, cycles
    if abs(fraction - 0.5) <= PHASE_TOLERANCE_CYCLES:
        return Role.OPPOSED_PHASE, cycles
    return Role.NONE, cycles


def geometry_key(frame: Frame) -> tuple[Any, ...]:
    """Same frame of reference, orientation and in-plane grid (rounded to tolerances)."""
    return (
        frame.frame_of_reference_uid,
        tuple(round(v, 3) for v in frame.orientation or ()),
        frame.rows,
        frame.columns,
        tuple(round(v, 3) for v in frame.pixel_spacing or ()),
    )


def _plane_key(frame: Frame) -> tuple[Any, ...]:
    return (*geometry_key(frame), tuple(round(v, 2) for v in frame.position or ()))


def classify(frames: Iterable[Frame]) -> list[Classified]:
    """Give every frame a role and a reason."""
    frames = list(frames)
    out: list[Classified] = []
    physics: list[Frame] = []
    for frame in frames:
        decided = _classify_by_labels(frame)
        if decided is not None:
            out.append(decided)
        else:
            physics.append(frame)
    # The TE rule needs a sibling echo at the same plane: several echo times at one geometry.
    echo_times_at: dict[tuple[Any, ...], set[float]] = defaultdict(set)
    for frame in physics:
        if frame.echo_time is not None:
            echo_times_at[_plane_key(frame)].add(round(frame.echo_time, 2))
    for frame in physics:
        out.append(_classify_by_echo_time(frame, echo_times_at[_plane_key(frame)]))
    return out


def _classify_by_labels(frame: Frame) -> Classified | None:
    def none(reason: str) -> Classified:
        return Classified(frame, Role.NONE, reason, "")

    if frame.manufacturer.strip().lower() == MARROWNODE_MANUFACTURER:
        return none("a marrownode result, not a source image")
    if frame.complex_component in ("PHASE", "REAL", "IMAGINARY"):
        return none(f"{frame.complex_component.lower()} image: only magnitude carries signal")
    if frame.modality.upper() != "MR":
        return none(f"not MR (modality {frame.modality or 'missing'})")
    if frame.rows is None or frame.position is None or frame.orientation is None:
        return none("not an image with plane geometry")
    if frame.frame_type:
        role = _role_from_tokens(frame.frame_type)
        if role is not None:
            return Classified(frame, role, f"FrameType token ({role.value})", "tokens")
    role = _role_from_tokens(frame.image_type)
    if role is not None:
        return Classified(frame, role, f"ImageType token ({role.value})", "tokens")
    if frame.private_type in _PRIVATE:
        role = _PRIVATE[frame.private_type]
        return Classified(frame, role, f"Philips private type {frame.private_type}", "private")
    role = _role_from_naming(frame.series_description)
    if role is not None:
        return Classified(frame, role, f"series description naming ({role.value})", "naming")
    return None


def _classify_by_echo_time(frame: Frame, sibling_echo_times: set[float]) -> Classified:
    def none(reason: str) -> Classified:
        return Classified(frame, Role.NONE, reason, "")

    suppressed = fat_suppressed(frame)
    if suppressed:
        return none(f"fat-suppressed ({suppressed}): echo-time rule not applied")
    sequences = {s.upper() for s in frame.scanning_sequence}
    if sequences and "GR" not in sequences:
        return none(f"not gradient echo (ScanningSequence {'/'.join(sorted(sequences))})")
    if frame.image_type and frame.image_type[0].upper() == "DERIVED":
        return none("derived image without Dixon labels: echo time not meaningful")
    if frame.echo_time is None or frame.echo_time <= 0:
        return none("no echo time")
    field = frame.field_strength_t
    if field is None:
        return none("no field strength or imaging frequency")
    if len(sibling_echo_times) < 2:
        return none("single echo: no sibling echo on the same geometry")
    role, cycles = phase_of_echo(frame.echo_time, field)
    if role is Role.NONE:
        return none(f"TE {frame.echo_time:g} ms is {cycles:.2f} fat-water cycles at "
                    f"{field:.2f} T: neither in nor opposed phase")
    return Classified(frame, role,
                      f"echo time {frame.echo_time:g} ms = {cycles:.2f} cycles at {field:.2f} T",
                      "echo_time")
