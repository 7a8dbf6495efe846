"""Thumbnails of a study's colour overlay, rendered from the result objects the node sent (so
the console shows what the PACS shows), cached by file and modification time."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread

from marrownode.report_shape import OutputEntry, StudyShape
from marrownode.vocabulary import OutputKind

THUMBNAIL_PIXELS = 320
THUMBNAILS_PER_SET = 4


def overlay_outputs(report: StudyShape | None) -> dict[str, list[OutputEntry]]:
    """Per set key, the overlay slices to show (up to THUMBNAILS_PER_SET, in slice order):
    the slice with the largest focus first, then slices well into the localised marrow (at
    least a quarter of the most any slice has) evenly spaced;
    without that knowledge (older reports), evenly through the middle half of the stack."""
    chosen: dict[str, list[OutputEntry]] = {}
    for dixon_set in report["dixon_sets"] if report else []:
        overlays = [o for o in dixon_set["outputs"] if o["kind"] == OutputKind.OVERLAY]
        if overlays:
            chosen[dixon_set["key"]] = _pick_slices(overlays)
    return chosen


def _evenly(items: list[Any], count: int) -> list[Any]:
    if count <= 0 or not items:
        return []
    if len(items) <= count:
        return list(items)
    return [items[int((i + 0.5) * len(items) / count)] for i in range(count)]


def _pick_slices(overlays: list[OutputEntry]) -> list[OutputEntry]:
    most = max((o.get("marrow_voxels", 0) for o in overlays), default=0)
    # slices that cut well into the marrow (not a sliver at a body's edge)
    with_marrow = [o for o in overlays if most and o.get("marrow_voxels", 0) >= most / 4]
    if not with_marrow:
        quarter = len(overlays) // 4
        return _evenly(overlays[quarter:len(overlays) - quarter] or overlays, THUMBNAILS_PER_SET)
    picked: list[OutputEntry] = []
    focus = max(overlays, key=lambda o: o.get("focus_voxels", 0))
    if focus.get("focus_voxels"):
        picked.append(focus)
    rest = [o for o in with_marrow if o is not focus]
    picked += _evenly(rest, THUMBNAILS_PER_SET - len(picked))
    return sorted(picked, key=overlays.index)


def _outputs(report: StudyShape | None) -> list[OutputEntry]:
    if report is None:
        return []
    found = [o for dixon_set in report["dixon_sets"] for o in dixon_set["outputs"]]
    return found + [o for request in report.get("requests", []) for o in request["outputs"]]


def output_kinds(report: StudyShape | None) -> dict[str, str]:
    """SOP Instance UID → what the output is ("overlay: signal loss overlay")."""
    return {o["sop_instance_uid"]: f"{o['kind']}: {o.get('series_description', '')}"
            for o in _outputs(report)}


def find_output(report: StudyShape | None, sop_instance_uid: str) -> OutputEntry | None:
    """The report's output entry with this SOP Instance UID (the only files served)."""
    for output in _outputs(report):
        if output["sop_instance_uid"] == sop_instance_uid:
            return output
    return None


def thumbnail_png(results_dir: Path, relative_path: str) -> bytes:
    """A PNG of the instance at results_dir/relative_path, at most THUMBNAIL_PIXELS wide;
    FileNotFoundError when it is gone or lies outside results_dir."""
    base = results_dir.resolve()
    path = (base / relative_path).resolve()
    if not path.is_relative_to(base):
        raise FileNotFoundError(relative_path)
    return _render(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _render(path: str, modified_ns: int) -> bytes:
    pixels = dcmread(path).pixel_array
    if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        pixels = pixels[len(pixels) // 2]  # a multi-frame object: its middle frame
    if pixels.dtype != np.uint8:
        span = float(pixels.max() - pixels.min()) or 1.0
        pixels = ((pixels - pixels.min()) * (255.0 / span)).astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS * 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
