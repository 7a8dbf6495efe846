"""The whole spine on one sagittal stack (synthetic/whole_spine.py): the column followed through
its curves, cervical and thoracic bodies found as well as lumbar ones, the levels counted from
C2's dens and checked against the sacrum, and never a name where the two disagree or C2 is out
of view."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np

from marrownode.config import Settings
from marrownode.pipeline import quant_parameters
from marrownode.quant.analysis import QuantResult, analyse_set
from marrownode.synthetic.lumbar import LumbarPhantom
from marrownode.synthetic.whole_spine import DENS_HEIGHT_MM, whole_column, whole_spine_phantom
from tests.unit.test_marrow import volume_geometry

ALL_LEVELS = [*(f"C{n}" for n in range(2, 8)), *(f"T{n}" for n in range(1, 13)),
              *(f"L{n}" for n in range(1, 6)), "S1", "S2", "S3"]


@cache
def _phantom(variant: str) -> LumbarPhantom:
    return whole_spine_phantom(variant)


def _analyse(phantom: LumbarPhantom, first_row: int = 0) -> QuantResult:
    """The stack from first_row down (a field of view that starts lower)."""
    echoes = phantom.echoes(snr=60, seed=3)
    spacing = (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm)
    whole = volume_geometry(phantom)
    first = np.add(whole.origin, np.multiply(whole.row_direction, spacing[1] * first_row))
    geometry = replace(whole, origin=tuple(float(c) for c in first))
    cut = slice(first_row, None)
    return analyse_set(echoes["in_phase"][:, cut], echoes["opposed_phase"][:, cut], spacing,
                       1.5, echoes["water"][:, cut], echoes["fat"][:, cut],
                       quant_parameters(Settings()), geometry=geometry)


@cache
def _analysed(variant: str) -> QuantResult:
    return _analyse(_phantom(variant))


def _truth_levels(phantom: LumbarPhantom, result: QuantResult, first_row: int = 0) -> list[str]:
    """Per localised body, the truth level holding most of it."""
    vertebra = phantom.vertebra[:, first_row:]
    levels = []
    for number in range(1, len(result.localisation.labels) + 1):
        truth = vertebra[result.localisation.bodies == number]
        numbers, counts = np.unique(truth[truth > 0], return_counts=True)
        levels.append(phantom.level_names[int(numbers[np.argmax(counts)])])
    return levels


def test_the_phantom_has_the_three_curves_and_the_craniocervical_junction() -> None:
    """Cervical lordosis (C5 in front of C2 and C7), thoracic kyphosis (T7 behind T1 and
    T12), lumbar lordosis (L3 in front of T12 and L5); C2's dens rises above its body."""
    depth = {s.name: s.centre[1] for s in whole_column()}  # y: posterior positive
    assert depth["C5"] < depth["C2"] and depth["C5"] < depth["C7"]
    assert depth["T7"] > depth["T1"] and depth["T7"] > depth["T12"]
    assert depth["L3"] < depth["T12"] and depth["L3"] < depth["L5"]
    phantom = _phantom("normal")
    c2 = phantom.vertebra == 1
    rows = np.flatnonzero(c2.any(axis=(0, 2)))
    assert (rows[-1] - rows[0]) * phantom.pixel_spacing_mm[0] > DENS_HEIGHT_MM + 12.0


def test_every_level_is_one_body_named_from_c2_and_no_focus_on_a_normal_spine() -> None:
    phantom, result = _phantom("normal"), _analysed("normal")
    truth = _truth_levels(phantom, result)
    assert truth == ALL_LEVELS, "one body per level, C2 to S3, in order"
    assert result.localisation.levels == ALL_LEVELS
    assert "C2" in result.localisation.levels_reason
    assert "sacrum agree" in result.localisation.levels_reason
    assert result.foci == []
    assert result.endplate_bands == [], "no disc inside a body read as an endplate band"


def test_a_thoracic_metastasis_is_one_focus_at_its_level() -> None:
    result = _analysed("metastasis_t8")
    names = result.localisation.levels
    assert [names[f.vertebra - 1] for f in result.foci] == ["T8"]


def test_a_transitional_segment_leaves_the_levels_unnamed() -> None:
    """Six lumbar-type bodies: counted from C2 the sacrum comes one body late; no name is
    guessed."""
    phantom, result = _phantom("transitional"), _analysed("transitional")
    assert _truth_levels(phantom, result)[-5:] == ["L5", "L6", "S1", "S2", "S3"]
    assert result.localisation.levels == [None] * len(result.localisation.labels)
    assert "24 mobile bodies" in result.localisation.levels_reason


def test_without_c2_in_view_the_whole_spine_is_not_counted() -> None:
    """The field of view starts below C2: the top body is C3, which has no dens; with 21
    mobile bodies above the sacrum nothing names them."""
    phantom = _phantom("normal")
    number = next(n for n, name in phantom.level_names.items() if name == "C2")
    first_row = int(np.flatnonzero((phantom.vertebra == number).any(axis=(0, 2)))[-1]) + 3
    result = _analyse(phantom, first_row)
    assert _truth_levels(phantom, result, first_row)[0] == "C3"
    assert result.localisation.levels == [None] * len(result.localisation.labels)
    assert "mobile bodies above the sacrum" in result.localisation.levels_reason
