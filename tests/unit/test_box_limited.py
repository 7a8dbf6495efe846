"""The localiser works in boxes around what it looks at (issue 28's whole-body time): the
cores' neighbourhood and growth, the cortex frame's closing, the hole fill, the in-phase
gradient and the internal standards' marrow margin each run in their mask's box widened by
their reach. Every one must give the voxels the whole grid gives: each is checked against its
whole-grid form on scattered masks, in boxes cut by the grid's edges and boxes well inside,
and the whole analysis with every box widened to the whole grid. The overlay blends colour
and outlines foci in boxes too (issue 28's spine time to result). The other exact fast forms
of issue 28 are checked here as well: block counts, in-plane squares, per-body boxes, a
finite volume read without a copy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

import marrownode.quant.body as body_module
import marrownode.quant.bone as bone_module
import marrownode.quant.internal_standards as standards_module
import marrownode.quant.masks as masks_module
import marrownode.quant.spine as spine_module
from marrownode.config import Settings
from marrownode.pipeline import quant_parameters
from marrownode.quant import blocks
from marrownode.quant.analysis import analyse_set
from marrownode.quant.body import fill_holes_per_slice
from marrownode.quant.bone import relative_gradient
from marrownode.quant.geometry import VolumeGeometry
from marrownode.quant.levels import GAP_PERCENTILE, _gap_mm
from marrownode.quant.maps import finite_or_zero
from marrownode.quant.masks import (
    closed_in_plane,
    disk_dilated,
    disk_eroded,
    in_plane_box,
    label_boxes,
    labelled,
    near,
    nearest_within,
    square_dilated,
    square_eroded,
    voxel_indices,
    within_mm,
)
from marrownode.results.overlay import YELLOW, OverlayRenderer, _grey
from marrownode.synthetic.geometry import geometry_for
from marrownode.synthetic.lumbar import lumbar_phantom

SPACINGS = ((4.0, 0.9, 0.9), (1.5, 1.5, 1.5), (0.8, 2.0, 1.2))


def scattered(rng: np.random.Generator, trials: int) -> Iterator[np.ndarray]:
    """Masks of scattered voxels filling a random box: some boxes reach the grid's edges,
    some lie well inside it, some are one voxel."""
    for trial in range(trials):
        shape = (int(rng.integers(3, 12)), int(rng.integers(20, 50)), int(rng.integers(20, 50)))
        low = [0 if trial % 3 == 0 else int(rng.integers(0, s // 2)) for s in shape]
        high = [s if trial % 3 == 1 else int(rng.integers(lo + 1, s + 1))
                for lo, s in zip(low, shape, strict=True)]
        mask = np.zeros(shape, dtype=bool)
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        mask[box] = rng.random(mask[box].shape) < rng.uniform(0.05, 0.6)
        yield mask


def test_the_hole_fill_is_scipys_slice_by_slice() -> None:
    for number, mask in enumerate(scattered(np.random.default_rng(1), 40)):
        expected = np.stack([ndimage.binary_fill_holes(s) for s in mask])
        assert (fill_holes_per_slice(mask) == expected).all(), number


def test_near_is_the_whole_grids_dilation_and_distance() -> None:
    for number, mask in enumerate(scattered(np.random.default_rng(2), 30)):
        spacing = SPACINGS[number % 3]
        for distance in (1.0, 4.5, 9.0):
            expected = ndimage.binary_dilation(mask) | (
                ndimage.distance_transform_edt(~mask, sampling=spacing) <= distance)
            assert (near(mask, distance, spacing) == expected).all(), (number, distance)


def test_the_in_plane_closing_is_the_whole_grids() -> None:
    for number, mask in enumerate(scattered(np.random.default_rng(3), 30)):
        for radius in ((1, 1), (2, 3), (4, 2)):
            rows, columns = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1]
            disk = (rows / radius[0]) ** 2 + (columns / radius[1]) ** 2 <= 1.0
            expected = ndimage.binary_closing(mask, structure=disk[None], border_value=0) | mask
            assert (closed_in_plane(mask, disk) == expected).all(), (number, radius)


def test_growth_to_the_nearest_seed_is_the_whole_grids() -> None:
    rng = np.random.default_rng(4)
    for number, mask in enumerate(scattered(rng, 30)):
        spacing = SPACINGS[number % 3]
        seeds, count = ndimage.label(mask & (rng.random(mask.shape) < 0.1))
        reach = rng.uniform(1.0, 8.0, count + 1).astype(np.float32)
        distance, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing,
                                                           return_indices=True)
        label = seeds[tuple(nearest)]
        expected = np.where(distance <= reach[label], label, 0) if count else 0 * seeds
        assert (nearest_within(seeds, reach, spacing) == expected).all(), number


def test_the_gradient_is_the_whole_grids_where_it_is_read() -> None:
    rng = np.random.default_rng(5)
    for number, where in enumerate(scattered(rng, 20)):
        volume = rng.uniform(10, 400, where.shape).astype(np.float32)
        sigma = (0.0, 1.0, 1.0)
        smooth = ndimage.gaussian_filter(volume, sigma=sigma)
        rows = ndimage.gaussian_filter(volume, sigma=sigma, order=(0, 1, 0))
        columns = ndimage.gaussian_filter(volume, sigma=sigma, order=(0, 0, 1))
        expected = np.hypot(rows, columns) / np.maximum(smooth, 1e-6)
        assert (relative_gradient(volume, where)[where] == expected[where]).all(), number


def _whole_grid(mask: np.ndarray, *_: Any) -> tuple[slice, slice, slice] | None:
    along_slices, rows, columns = (slice(0, size) for size in mask.shape)
    return (along_slices, rows, columns) if mask.any() else None


def test_the_lumbar_analysis_is_the_whole_grids(monkeypatch) -> None:
    """The whole analysis on the sagittal lumbar metastasis phantom: the same bodies, arches,
    foci, internal standards and medians with the boxes as with every box the whole grid."""
    phantom = lumbar_phantom("metastasis_centre")
    echoes = phantom.echoes(snr=40, seed=5)
    spacing = (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm)
    g = geometry_for("sagittal")
    geometry = VolumeGeometry(tuple(g.origin), tuple(g.normal), tuple(g.col_dir),
                              tuple(g.row_dir), spacing)

    def analyse() -> Any:
        return analyse_set(echoes["in_phase"], echoes["opposed_phase"], spacing, 1.5,
                           echoes["water"], echoes["fat"], quant_parameters(Settings()),
                           geometry=geometry)

    boxed = analyse()
    with monkeypatch.context() as patch:
        for module in (masks_module, body_module, bone_module, spine_module,
                       standards_module):
            for name in ("box_around", "in_plane_box"):
                if hasattr(module, name):
                    patch.setattr(module, name, _whole_grid)
        whole = analyse()
    assert boxed.localisation.bodies.max() >= 5 and boxed.foci
    assert (boxed.localisation.bodies == whole.localisation.bodies).all()
    assert (boxed.localisation.posterior == whole.localisation.posterior).all()
    assert (boxed.muscle_in_phase, boxed.disc_in_phase) == (whole.muscle_in_phase,
                                                            whole.disc_in_phase)
    assert len(boxed.foci) == len(whole.foci)
    for mine, theirs in zip(boxed.foci, whole.foci, strict=True):
        assert (mine.mask == theirs.mask).all() and mine.statistics == theirs.statistics
    assert boxed.vertebrae == whole.vertebrae


@pytest.mark.parametrize("name", ["near", "closed_in_plane", "nearest_within"])
def test_an_empty_mask_gives_an_empty_answer(name: str) -> None:
    empty = np.zeros((3, 8, 8), dtype=bool)
    if name == "near":
        assert not near(empty, 5.0, (1.0, 1.0, 1.0)).any()
    elif name == "closed_in_plane":
        assert not closed_in_plane(empty, np.ones((3, 3), dtype=bool)).any()
    else:
        assert not nearest_within(empty.astype(np.int16), np.zeros(1, np.float32),
                                  (1.0, 1.0, 1.0)).any()


def _whole_slice_render(renderer: OverlayRenderer, anatomy: np.ndarray, loss: np.ndarray,
                        focus: np.ndarray, marrow: np.ndarray) -> np.ndarray:
    """The overlay's image part as it was drawn before the boxes: blend and outline over the
    whole slice."""
    grey = _grey(anatomy, *renderer.window)
    image = renderer._blend(grey, loss, marrow)
    inner = ndimage.binary_erosion(focus, iterations=renderer._outline_iterations)
    image[focus & ~inner] = YELLOW
    return image


def test_the_overlay_colours_and_outlines_as_over_the_whole_slice() -> None:
    """Colour is blended in the marrow's box and foci outlined in theirs: each frame must be
    the whole slice's, with marrow and foci against the image's edges and well inside."""
    rng = np.random.default_rng(5)
    for number, mask in enumerate(scattered(rng, 30)):
        shape = mask.shape[1:]
        anatomy = rng.uniform(0, 900, shape).astype(np.float32)
        loss = rng.uniform(-20, 90, shape).astype(np.float32)
        loss[rng.random(shape) < 0.1] = np.nan
        focus = mask[0] & (rng.random(shape) < 0.7)
        focus = ndimage.binary_dilation(focus) & mask[0]
        renderer = OverlayRenderer(shape, (50.0, 800.0), 20.0, 1.5, "test")
        frame = renderer.render(anatomy, loss, focus, mask[0], "slice")
        left = (renderer.canvas_width - renderer.width) // 2
        drawn = frame[:renderer.height, left:left + renderer.width]
        expected = _whole_slice_render(renderer, anatomy, loss, focus, mask[0])
        expected = np.repeat(np.repeat(expected, renderer.factor, 0), renderer.factor, 1)
        assert (drawn == expected).all(), number


def test_a_masks_block_fraction_is_its_block_mean() -> None:
    """The localiser's coarse grid counts a mask's voxels per block instead of averaging them
    as floats: the same numbers, on any grid and block size (edges padded alike)."""
    for number, mask in enumerate(scattered(np.random.default_rng(9), 30)):
        for factor in (2, 3, 4, 7):
            expected = blocks.block_mean(mask.astype(np.float32), factor)
            found = blocks.block_fraction(mask, factor)
            assert found.dtype == expected.dtype and (found == expected).all(), (number, factor)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_the_in_plane_squares_are_scipys(radius: int) -> None:
    """Erosion and dilation by an in-plane square done as a row pass and a column pass of
    shifted ANDs / ORs: scipy's, at the grid's edges too (outside is background)."""
    square = np.ones((1, 2 * radius + 1, 2 * radius + 1), dtype=bool)
    rng = np.random.default_rng(radius)
    for number, mask in enumerate(scattered(rng, 40)):
        dense = mask | (rng.random(mask.shape) < 0.5)  # erosion needs full neighbourhoods
        for shape in (mask, dense, dense[:, :radius + 1, :]):
            assert (square_eroded(shape, radius)
                    == ndimage.binary_erosion(shape, structure=square)).all(), number
            assert (square_dilated(shape, radius)
                    == ndimage.binary_dilation(shape, structure=square)).all(), number


def test_the_gap_between_bodies_is_read_in_their_boxes() -> None:
    """Level naming measures each disc between two bodies in the pair's box from find_objects
    (not by comparing the whole grid per body): the same gap, empty neighbours included."""
    rng = np.random.default_rng(11)
    for trial in range(200):
        bodies = (rng.integers(0, 5, (4, 14, 12)) * (rng.random((4, 14, 12)) < 0.3)
                  ).astype(np.int16)
        if trial % 4 == 0:
            bodies[bodies == 2] = 0
        boxes = ndimage.find_objects(bodies)
        for upper in range(1, int(bodies.max())):
            first, second = bodies == upper, bodies == upper + 1
            if not first.any() or not second.any():
                continue
            box = tuple(slice(int(i.min()), int(i.max()) + 1)
                        for i in np.nonzero(first | second))
            expected = ndimage.distance_transform_edt(~first[box], sampling=(2.0, 0.7, 0.9))
            assert _gap_mm(bodies, upper, boxes, (2.0, 0.7, 0.9)) == float(
                np.percentile(expected[second[box]], GAP_PERCENTILE)), (trial, upper)


def test_the_small_ball_opening_is_scipys_in_the_masks_box() -> None:
    """An opening by a small ball runs in the mask's box (outside it only background, as the
    border counts): scipy's opening of the whole grid."""
    for spacing in SPACINGS:
        ball = bone_module._ball(2.0, spacing)
        assert ball.sum() <= bone_module._SMALL_BALL
        for number, mask in enumerate(scattered(np.random.default_rng(13), 30)):
            dense = ndimage.binary_dilation(mask, iterations=2) & (
                np.random.default_rng(number).random(mask.shape) < 0.9)
            expected = ndimage.binary_opening(dense, structure=ball)
            assert (bone_module.opening(dense, 2.0, spacing) == expected).all(), number


def test_a_finite_volume_is_read_as_it_is_and_others_as_nan_to_num_makes_them() -> None:
    rng = np.random.default_rng(3)
    volume = rng.uniform(0, 900, (3, 9, 9)).astype(np.float32)
    assert finite_or_zero(volume) is volume  # no copy of a decoded image
    volume[0, 1, 2], volume[1, 2, 3], volume[2, 3, 4] = np.nan, np.inf, -np.inf
    found = finite_or_zero(volume)
    assert found is not volume and (found == np.nan_to_num(volume)).all()


def test_the_block_mean_is_numpys_float32_mean_exactly() -> None:
    """The localiser's blocks are the same numbers as numpy's float32 reduction over the
    block axes (strided adds in its order), for every block width and any grid size."""
    rng = np.random.default_rng(11)
    for factor in range(1, 11):
        volume = (rng.random((3, int(rng.integers(20, 60)), int(rng.integers(20, 60)))) * 150
                  - 30).astype(np.float32)
        k, rows, columns = volume.shape
        padded = np.pad(volume, ((0, 0), (0, -rows % factor), (0, -columns % factor)),
                        mode="edge")
        expected = padded.reshape(k, padded.shape[1] // factor, factor,
                                  padded.shape[2] // factor, factor).mean(axis=(2, 4),
                                                                          dtype=np.float32)
        found = blocks.block_mean(volume, factor)
        assert found.dtype == expected.dtype and (found == expected).all(), factor


def test_boxes_and_indices_read_in_the_labels_box_are_the_whole_grids() -> None:
    """label_boxes is ndimage.find_objects and voxel_indices np.argwhere, exactly, wherever
    the labels lie (at the grid's edges, inside it, none at all)."""
    rng = np.random.default_rng(12)
    for number, mask in enumerate(scattered(rng, 40)):
        labels = np.where(mask, rng.integers(1, 5, mask.shape), 0).astype(np.int16)
        assert label_boxes(labels) == ndimage.find_objects(labels), number
        for value in (1, 3, 7):
            found, expected = voxel_indices(labels == value), np.argwhere(labels == value)
            assert found.dtype == expected.dtype and found.shape == expected.shape, number
            assert (found == expected).all(), number
    empty = np.zeros((3, 4, 5), dtype=np.int16)
    assert label_boxes(empty) == [] and voxel_indices(empty > 0).shape == (0, 3)


def test_labelling_in_a_box_is_the_whole_grids() -> None:
    """labelled is ndimage.label, exactly (numbering, count, dtype), in the mask's own box or
    a wider one (the foci label in the marrow's in-plane box), and for an empty mask."""
    rng = np.random.default_rng(13)
    for number, mask in enumerate(scattered(rng, 60)):
        expected, count = ndimage.label(mask)
        for box in (None, in_plane_box(mask, 1)):
            found, found_count = labelled(mask, box)
            assert found_count == count and found.dtype == expected.dtype, number
            assert (found == expected).all(), number
    empty = np.zeros((3, 4, 5), dtype=bool)
    found, found_count = labelled(empty)
    assert found_count == 0 and not found.any() and found.dtype == ndimage.label(empty)[0].dtype


def _coordinate_volume(geometry: VolumeGeometry, patient_axis: int,
                       shape: tuple[int, int, int]) -> np.ndarray:
    """A patient coordinate as it was computed before: a float32 volume of shape, each axis's
    line added in place."""
    directions = (geometry.slice_direction, geometry.row_direction, geometry.column_direction)
    total = np.full(shape, geometry.origin[patient_axis], dtype=np.float32)
    for axis, (direction, spacing) in enumerate(zip(directions, geometry.spacing_mm,
                                                    strict=True)):
        step = direction[patient_axis] * spacing
        if step:
            total += (np.arange(shape[axis], dtype=np.float32) * step).reshape(
                [-1 if a == axis else 1 for a in range(3)])
    return total


def test_a_patient_coordinate_is_the_whole_volumes_as_broadcast_lines() -> None:
    """patient_coordinate broadcasts to exactly the float32 volume it used to fill, for
    sagittal, axial and oblique stacks, with python or numpy floats in the geometry; on a
    stack along the patient's axes it is a line."""
    rng = np.random.default_rng(14)
    for trial in range(200):
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        if trial % 2 == 0:  # along the patient's axes, any order and sense
            rotation = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], 3)[:, None]
        numbers: Any = tuple if trial % 4 < 2 else (lambda v: tuple(float(x) for x in v))
        geometry = VolumeGeometry(numbers(rng.normal(size=3) * 100), numbers(rotation[0]),
                                  numbers(rotation[1]), numbers(rotation[2]),
                                  numbers(rng.uniform(0.3, 5.0, 3)))
        shape = (int(rng.integers(1, 25)), int(rng.integers(1, 25)), int(rng.integers(1, 25)))
        for axis in range(3):
            found = geometry.patient_coordinate(axis, shape)
            expected = _coordinate_volume(geometry, axis, shape)
            assert found.dtype == np.float32, trial
            assert (np.broadcast_to(found, shape) == expected).all(), (trial, axis)
            if trial % 2 == 0:
                assert sorted(found.shape)[:2] == [1, 1], (trial, found.shape)


def _ellipse(rows: int, columns: int) -> np.ndarray:
    grid_rows, grid_columns = np.ogrid[-rows:rows + 1, -columns:columns + 1]
    disk: np.ndarray = (grid_rows / rows) ** 2 + (grid_columns / columns) ** 2 <= 1.0
    return disk


def test_disk_dilation_erosion_and_closing_are_scipys() -> None:
    """The in-plane disk operations by shifted row runs are scipy's, voxel for voxel, for
    ellipses of every radius the localiser uses, on grids smaller than the disk too, with
    the grid's outside as background or not."""
    rng = np.random.default_rng(14)
    for trial in range(200):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        mask = rng.random(shape) < rng.uniform(0.05, 0.9)
        disk = _ellipse(int(rng.integers(1, 7)), int(rng.integers(1, 7)))
        assert (disk_dilated(mask, disk)
                == ndimage.binary_dilation(mask, structure=disk[None])).all(), trial
        for outside in (False, True):
            assert (disk_eroded(mask, disk, outside) == ndimage.binary_erosion(
                mask, structure=disk[None], border_value=int(outside))).all(), trial
        closed = ndimage.binary_closing(mask, structure=disk[None], border_value=0)
        assert (closed_in_plane(mask, disk) == (mask | closed)).all(), trial


def test_eroding_by_the_offsets_within_a_distance_is_the_distance_transform() -> None:
    """A voxel farther than d (in-plane, in mm) from the mask's outside, as the Euclidean
    distance transform measures it, is exactly what survives erosion by the offsets within
    d (the same floating-point distance: ties at exactly d agree)."""
    rng = np.random.default_rng(15)
    pixels = (0.55, 0.6, 0.75, 0.9375, 1.1, 1.25)
    for trial in range(200):
        shape = (int(rng.integers(1, 4)), int(rng.integers(2, 40)), int(rng.integers(2, 40)))
        mask = rng.random(shape) < rng.uniform(0.3, 0.98)
        pixel = (float(rng.choice(pixels)), float(rng.choice(pixels)))
        width = int(rng.integers(1, 6)) * max(pixel)
        expected = ndimage.distance_transform_edt(mask, sampling=(1e6, *pixel)) > width
        found = disk_eroded(mask, within_mm(width, pixel), outside=True)
        assert (found == expected).all(), (trial, pixel, width)
