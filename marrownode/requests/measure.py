"""Measuring requests in a study: find them, place each region on a Dixon set, measure it
like a focus, and answer each request with an SR (and an entry in report.json)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from marrownode.config import Settings
from marrownode.dixon.header import MARROWNODE_MANUFACTURER, summarise
from marrownode.quant.analysis import QuantResult
from marrownode.quant.geometry import VolumeGeometry
from marrownode.quant.localisation import Localisation
from marrownode.quant.regions import (
    categorise,
    localisation_from_segments,
    place_planar,
    place_voxels,
)
from marrownode.quant.roi import roi_statistics
from marrownode.requests.read import ImagePlane, MeasurementRequest, Region, read_request
from marrownode.requests.read import request_kind as kind_of_class
from marrownode.vocabulary import FatFractionMethod, RegionRefusal

log = logging.getLogger(__name__)


@dataclass
class PendingRequest:
    """A request object and the measurement (or reason) of each of its regions."""

    dataset: Dataset
    request: MeasurementRequest
    measured: dict[int, dict[str, Any]] = field(default_factory=dict)  # region index -> record
    reasons: dict[int, str] = field(default_factory=dict)


def _plane_lookup(headers: Sequence[dict[str, Any]]) -> Callable[[str, int | None],
                                                                 ImagePlane | None]:
    frames_of = {h["sop_instance_uid"]: h.get("frames") or [] for h in headers}

    def plane_of(sop_uid: str, frame: int | None) -> ImagePlane | None:
        frames = frames_of.get(sop_uid) or []
        index = (frame - 1) if frame else 0
        if not 0 <= index < len(frames):
            return None
        item = frames[index]
        if not item.get("position") or not item.get("orientation") or not item.get(
                "pixel_spacing"):
            return None
        orientation = np.asarray(item["orientation"], dtype=np.float64)
        spacing = item["pixel_spacing"]
        return ImagePlane(np.asarray(item["position"], dtype=np.float64), orientation[:3],
                          orientation[3:], (float(spacing[0]), float(spacing[1])))

    return plane_of


def _our_results(results_dir: Path | None) -> list[dict[str, Any]]:
    """Headers of the results already written for the study: a region may be drawn on one of
    our maps, which lie on the in-phase geometry but are not among the received instances."""
    if results_dir is None or not results_dir.is_dir():
        return []
    headers = []
    for path in results_dir.rglob("*.dcm"):
        try:
            headers.append(summarise(dcmread(path, stop_before_pixels=True)))
        except Exception:  # an unreadable result only means fewer planes to look up
            continue
    return headers


def find_requests(sources: Sequence[tuple[Path, dict[str, Any]]], settings: Settings,
                  tracking_uid: Callable[[str], str],
                  results_dir: Path | None = None) -> list[PendingRequest]:
    """Every request object in the study (our own outputs are never requests)."""
    requests = [(path, header) for path, header in sources
                if kind_of_class(header.get("sop_class_uid", "")) is not None and str(
                    header.get("manufacturer", "")).strip().lower() != MARROWNODE_MANUFACTURER]
    if not requests:
        return []
    headers = [header for _, header in sources] + _our_results(results_dir)
    plane_of = _plane_lookup(headers)
    found = []
    for path, header in requests:
        try:
            dataset = dcmread(path)
            found.append(PendingRequest(dataset, read_request(dataset, plane_of, tracking_uid)))
        except Exception as exc:  # a request we cannot read must not stop the analysis
            log.warning("event=request_unreadable sop=%s error=%s",
                        header.get("sop_instance_uid"), type(exc).__name__)
    return found


@dataclass(frozen=True)
class SetMaps:
    """What a Dixon set offers to measure on."""

    key: str
    geometry: VolumeGeometry
    in_phase: np.ndarray
    opposed: np.ndarray
    result: QuantResult
    in_phase_first: bool
    frame_of_reference_uid: str


def measure_on_set(pending: Sequence[PendingRequest], maps: SetMaps, settings: Settings) -> None:
    """Place and measure every region not yet measured on this set."""
    shape = maps.in_phase.shape
    voxel = float(np.prod(maps.geometry.spacing_mm))
    for item in pending:
        for number, region in enumerate(item.request.regions):
            if number in item.measured:
                continue
            if region.frame_of_reference_uid and maps.frame_of_reference_uid and (
                    region.frame_of_reference_uid != maps.frame_of_reference_uid):
                item.reasons.setdefault(number, "another frame of reference than the Dixon set")
                continue
            placed = (place_voxels(maps.geometry, shape, region.points_mm)
                      if region.graphic_type == "MASK"
                      else place_planar(maps.geometry, shape, region.graphic_type,
                                        region.points_mm))
            if placed.mask is None:
                item.reasons[number] = placed.reason
                continue
            item.measured[number] = _record(region, placed.mask, maps, voxel, settings)


def _record(region: Region, mask: np.ndarray, maps: SetMaps, voxel: float,
            settings: Settings) -> dict[str, Any]:
    result = maps.result
    statistics = roi_statistics(mask, {"fat_fraction_percent": result.fat_fraction},
                                maps.in_phase, maps.opposed, voxel)
    loss = float(statistics["signal_loss_ratio_of_means_percent"])
    fat = float(statistics["maps"]["fat_fraction_percent"]["mean"])
    threshold = result.threshold_percent
    count = int(statistics["voxel_count"])
    record: dict[str, Any] = {
        "label": region.label, "tracking_uid": region.tracking_uid, "set": maps.key,
        "signal_loss_percent": _rounded(loss), "sir": _rounded(
            float(statistics["sir_ratio_of_means"]), 4),
        "fat_fraction_percent": _rounded(fat),
        "fat_fraction_method": result.fat_fraction_method,
        "voxel_count": count,
        "below_threshold": None if threshold is None or not np.isfinite(loss)
        else bool(loss < threshold),
        "category": categorise(loss, fat,
                               result.fat_fraction_method
                               != FatFractionMethod.SIGNAL_FAT_FRACTION, threshold,
                               maps.in_phase_first,
                               settings.analysis.in_phase_first_margin_percent),
    }
    if region.graphic_type == "MASK":
        record["volume_mm3"] = _rounded(count * voxel)
    else:
        spacing = maps.geometry.spacing_mm
        record["area_mm2"] = _rounded(count * spacing[1] * spacing[2])
    if region.pixel_points is not None:
        record["drawn"] = {"graphic_type": region.graphic_type,
                           "pixel_points": region.pixel_points.tolist(),
                           "sop_class_uid": region.source_sop_class_uid,
                           "sop_instance_uid": region.source_sop_instance_uid}
    return record


def _rounded(value: float, digits: int = 2) -> float | None:
    return round(value, digits) if np.isfinite(value) else None


def request_records(item: PendingRequest, any_set: bool) -> list[dict[str, Any]]:
    """Every region of a request: its measurement, or why it has none."""
    records = []
    for number, region in enumerate(item.request.regions):
        if number in item.measured:
            records.append(item.measured[number])
        else:
            records.append({"label": region.label, "tracking_uid": region.tracking_uid,
                            "reason": item.reasons.get(number, "") if any_set
                            else RegionRefusal.NO_DIXON_SET})
    for problem in item.request.problems:
        records.append({"label": problem["label"], "tracking_uid": "",
                        "reason": problem["reason"]})
    return records


def segment_localisation(pending: Sequence[PendingRequest], geometry: VolumeGeometry,
                         shape: tuple[int, int, int],
                         frame_of_reference_uid: str) -> Localisation | None:
    """Vertebral bodies from the first request segmentation that codes vertebrae (CID 7603)
    and lies on this set, or None (then the images are used)."""
    for item in pending:
        vertebrae = []
        for region in item.request.regions:
            if region.vertebra is None or (
                    region.frame_of_reference_uid and frame_of_reference_uid
                    and region.frame_of_reference_uid != frame_of_reference_uid):
                continue
            placed = place_voxels(geometry, shape, region.points_mm)
            if placed.mask is not None:
                vertebrae.append((region.vertebra, placed.mask))
        if vertebrae:
            return localisation_from_segments(vertebrae, geometry,
                                              item.request.sop_instance_uid)
    return None
