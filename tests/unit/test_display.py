"""The summary page hangs a slice as viewers do, whatever way the scanner stored it: a sagittal
stack stored upside down or facing the other way reads head up, anterior on the left, with the
patient directions at the picture's edges; and its analysis is the same as the usual stack's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from marrownode.config import Settings
from marrownode.pipeline import process_paths
from marrownode.quant.geometry import VolumeGeometry
from marrownode.results.display import DisplayView
from marrownode.results.summary import PANEL
from marrownode.synthetic.geometry import Geometry, geometry_for
from marrownode.synthetic.lumbar import lumbar_phantom
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets


def _volume_geometry(rows: tuple[float, ...], columns: tuple[float, ...]) -> VolumeGeometry:
    normal = tuple(float(v) for v in np.cross(columns, rows))
    return VolumeGeometry((0.0, 0.0, 0.0), normal, rows, columns, (4.0, 0.75, 0.75))  # type: ignore[arg-type]


@pytest.mark.parametrize("rows, columns, expected", [
    # DICOM's usual sagittal (IOP 0\1\0\0\0\-1): rows run feet-ward, columns posterior
    ((0, 0, -1), (0, 1, 0), (False, False, False, ("S", "I", "A", "P"))),
    ((0, 0, 1), (0, 1, 0), (False, True, False, ("S", "I", "A", "P"))),  # upside down
    ((0, 0, -1), (0, -1, 0), (False, False, True, ("S", "I", "A", "P"))),  # facing right
    ((0, 1, 0), (0, 0, -1), (True, False, False, ("S", "I", "A", "P"))),  # lying on its side
    ((0, 1, 0), (1, 0, 0), (False, False, False, ("A", "P", "R", "L"))),  # axial as usual
    ((0, -1, 0), (-1, 0, 0), (False, True, True, ("A", "P", "R", "L"))),  # axial, turned
    ((0, 0, -1), (1, 0, 0), (False, False, False, ("S", "I", "R", "L"))),  # coronal
])
def test_a_slice_is_turned_to_be_read(rows: tuple[float, ...], columns: tuple[float, ...],
                                      expected: tuple[object, ...]) -> None:
    view = DisplayView.of(_volume_geometry(rows, columns))
    assert (view.transpose, view.flip_rows, view.flip_columns, view.edges) == expected


def test_a_point_follows_its_pixel() -> None:
    """Where a label is written is where its pixel went: turned positions match the turned
    slice, with and without transposition."""
    stored = np.zeros((5, 7), dtype=int)
    stored[1, 5] = 1
    for view in (DisplayView(False, True, True, ("",) * 4),  # type: ignore[arg-type]
                 DisplayView(True, True, False, ("",) * 4)):  # type: ignore[arg-type]
        shown = view.plane(stored)
        assert tuple(int(v) for v in np.argwhere(shown == 1)[0]) == view.point(1, 5, stored.shape)


def _summary_and_levels(tmp_path: Path, name: str, geometry: Geometry | None,
                        ) -> tuple[np.ndarray, list[str | None]]:
    phantom = lumbar_phantom("metastasis_centre", geometry=geometry)
    write_datasets(build_study(StudyOptions(style="siemens", study_key=f"turned-{name}"),
                               phantom), tmp_path / name / "in")
    out = tmp_path / name / "out"
    process_paths([tmp_path / name / "in"], out, Settings())
    dixon_set = json.loads((out / "report.json").read_text())["studies"][0]["dixon_sets"][0]
    page = next(e for e in dixon_set["outputs"] if e["kind"] == "summary")
    pixels = dcmread(out / page["path"]).pixel_array
    return pixels, [v["level"] for v in dixon_set["vertebrae"]]


def test_a_stack_stored_upside_down_reads_head_up(tmp_path: Path) -> None:
    """The same spine written upside down (IOP 0\\1\\0\\0\\0\\1): the same levels and focus, and
    a summary page whose picture matches the usual stack's, not its mirror image (without
    the turn the sacrum would be at the top)."""
    usual = geometry_for("sagittal")
    upside_down = Geometry(usual.row_dir.copy(), -usual.col_dir, usual.origin.copy())
    page, levels = _summary_and_levels(tmp_path, "usual", None)
    turned, turned_levels = _summary_and_levels(tmp_path, "upside-down", upside_down)
    assert turned_levels == levels == ["L1", "L2", "L3", "L4", "L5", "S1", "S2"]
    top = (page.shape[0] - PANEL) // 2
    picture = (slice(top + 30, top + PANEL - 30), slice(40, PANEL - 30))  # inside the letters
    same = np.abs(turned[picture].astype(int) - page[picture].astype(int)).mean()
    stored_way = np.abs(turned[picture][::-1].astype(int) - page[picture].astype(int)).mean()
    assert same < 0.25 * stored_way, (same, stored_way)
