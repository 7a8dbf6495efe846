"""Aligned volumes for a Dixon set: pixels decoded (compressed transfer syntaxes through pydicom's
plugins), stored values turned into signal, stacked along the slice normal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from marrownode.dixon.sets import DixonSet, Stack
from marrownode.quant.geometry import VolumeGeometry


@dataclass
class SetVolumes:
    in_phase: np.ndarray
    opposed: np.ndarray
    water: np.ndarray | None
    fat: np.ndarray | None
    scanner_fat_fraction: np.ndarray | None  # percent, as the scanner stored it
    spacing_mm: tuple[float, float, float]  # (slice, row, column)
    geometry: VolumeGeometry


def _rescale(dataset: Dataset, frame_index: int | None) -> tuple[float, float]:
    """Slope and intercept for a frame: per-frame, shared, then top-level."""
    if frame_index is not None:
        for groups in (dataset.get("PerFrameFunctionalGroupsSequence"),
                       dataset.get("SharedFunctionalGroupsSequence")):
            if not groups:
                continue
            group = groups[frame_index] if len(groups) > frame_index else groups[0]
            transformation = group.get("PixelValueTransformationSequence")
            if transformation:
                item = transformation[0]
                return float(item.get("RescaleSlope", 1)), float(item.get("RescaleIntercept", 0))
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    return slope, float(dataset.get("RescaleIntercept", 0) or 0)


#: Uncompressed little-endian data: its stored values are its bytes (PS3.5 8.1.1).
NATIVE_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def stored_values(dataset: Dataset) -> np.ndarray:
    """The pixel data's stored values, as pydicom's pixel_array gives them. Uncompressed
    little-endian monochrome integers are read from their bytes, with pydicom's correction of
    unused high bits (Bits Stored below Bits Allocated): pydicom's decoder framework costs about
    a millisecond per image around that one read, a second on a whole-body study's 1,024. All
    else (compressed, big-endian, colour, float, short data) goes through pydicom."""
    meta = getattr(dataset, "file_meta", None)
    allocated = dataset.get("BitsAllocated")
    data = dataset.get("PixelData")
    if (meta is None or meta.get("TransferSyntaxUID") not in NATIVE_LITTLE_ENDIAN
            or not isinstance(data, bytes | bytearray) or allocated not in (8, 16, 32)
            or dataset.get("SamplesPerPixel", 1) != 1
            or dataset.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2")):
        return dataset.pixel_array
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    signed = dataset.get("PixelRepresentation", 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    count = frames * rows * columns
    if len(data) < count * dtype.itemsize:
        return dataset.pixel_array  # pydicom says what is missing
    values = np.frombuffer(data, dtype=dtype, count=count).reshape(
        (frames, rows, columns) if frames > 1 else (rows, columns))
    shift = allocated - int(dataset.get("BitsStored", allocated))
    if shift > 0:  # unused high bits are not the value's (pydicom shifts them out the same way)
        values = np.left_shift(values, shift)
        np.right_shift(values, shift, out=values)
    return values


class PixelCache:
    """Decode each file once even when several stacks (roles) share a multi-frame object."""

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self.paths = paths
        self._cache: dict[str, tuple[Dataset, np.ndarray | None]] = {}

    def plane(self, sop_instance_uid: str, frame_index: int | None) -> np.ndarray:
        cached = self._cache.get(sop_instance_uid)
        if cached is None or cached[1] is None:
            dataset: Dataset = dcmread(self.paths[sop_instance_uid])
            self._cache[sop_instance_uid] = (dataset, stored_values(dataset))
        dataset, pixels = self._cache[sop_instance_uid]
        assert pixels is not None
        plane = pixels[frame_index] if frame_index is not None else pixels
        slope, intercept = _rescale(dataset, frame_index)
        return plane.astype(np.float32) * np.float32(slope) + np.float32(intercept)

    def release_pixels(self) -> None:
        """Keep headers (results reference them), drop pixel data once volumes are built."""
        for uid, (dataset, _) in list(self._cache.items()):
            if "PixelData" in dataset:
                del dataset.PixelData
            self._cache[uid] = (dataset, None)

    def dataset(self, sop_instance_uid: str) -> Dataset:
        if sop_instance_uid not in self._cache:
            self.plane(sop_instance_uid, None)
        return self._cache[sop_instance_uid][0]


def load_stack(stack: Stack, cache: PixelCache) -> np.ndarray:
    """The stack's pixels as a (slice, row, column) volume in slice order."""
    return np.stack([cache.plane(f.sop_instance_uid, f.frame_index) for f in stack.frames])


def slice_spacing_mm(stack: Stack) -> float:
    """Distance between slice centres along the normal (thickness for a single slice)."""
    if stack.positions_mm.size > 1:
        return float(np.median(np.diff(stack.positions_mm)))
    return float(stack.first.slice_thickness or 1.0)


def stack_geometry(stack: Stack, spacing_mm: tuple[float, float, float]) -> VolumeGeometry:
    """Patient position and axes of the stack's volume (slices in ascending position)."""
    orientation = np.array(stack.first.orientation or (1, 0, 0, 0, 1, 0), dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])

    def vector(values: np.ndarray) -> tuple[float, float, float]:
        return (float(values[0]), float(values[1]), float(values[2]))

    return VolumeGeometry(
        origin=vector(np.array(stack.first.position or (0, 0, 0), dtype=float)),
        slice_direction=vector(normal), row_direction=vector(orientation[3:]),
        column_direction=vector(orientation[:3]), spacing_mm=spacing_mm)


def load_set(dixon_set: DixonSet, cache: PixelCache) -> SetVolumes:
    """The set's echoes (and water/fat) as aligned volumes with their spacing."""
    pixel_spacing = dixon_set.in_phase.first.pixel_spacing or (1.0, 1.0)
    spacing = (slice_spacing_mm(dixon_set.in_phase), float(pixel_spacing[0]),
               float(pixel_spacing[1]))
    return SetVolumes(
        in_phase=load_stack(dixon_set.in_phase, cache),
        opposed=load_stack(dixon_set.opposed, cache),
        water=load_stack(dixon_set.water, cache) if dixon_set.water else None,
        fat=load_stack(dixon_set.fat, cache) if dixon_set.fat else None,
        scanner_fat_fraction=(load_stack(dixon_set.scanner_fat_fraction, cache)
                              if dixon_set.scanner_fat_fraction else None),
        spacing_mm=spacing,
        geometry=stack_geometry(dixon_set.in_phase, spacing),
    )
