"""Finding the marrow (quant/spine, quant/foci, quant/analysis) on the anatomical phantom family,
whose truth masks say where every vertebral body, disc, the canal and the lesions are."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from marrownode.quant.analysis import QuantResult, analyse_set, focus_record
from marrownode.quant.geometry import SUPERIOR_INFERIOR, VolumeGeometry
from marrownode.synthetic.anatomy import (
    ANATOMY_CODES,
    ANATOMY_TISSUES,
    AnatomicalPhantom,
    anatomical_phantom,
    tissue_truth,
)
from marrownode.synthetic.geometry import geometry_for

THRESHOLD = 20.0
#: Tissues the localiser must never call marrow (centre labels; partial volume aside).
NOT_MARROW = ("disc", "csf", "muscle", "subcutaneous_fat", "viscera", "liver", "kidney")


def volume_geometry(phantom: AnatomicalPhantom) -> VolumeGeometry:
    g = geometry_for(phantom.orientation)
    return VolumeGeometry(tuple(g.origin), tuple(g.normal), tuple(g.col_dir), tuple(g.row_dir),
                          (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm))


@cache
def analysed(variant: str, orientation: str = "sagittal", snr: float | None = 25,
             zero_filled: bool = False) -> tuple[AnatomicalPhantom, QuantResult]:
    phantom = anatomical_phantom(variant, orientation, zero_filled=zero_filled)
    echoes = phantom.echoes(snr=snr, seed=7)
    result = analyse_set(echoes["in_phase"], echoes["opposed_phase"],
                         (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm), 1.5,
                         geometry=volume_geometry(phantom))
    return phantom, result


@pytest.mark.parametrize("orientation", ["sagittal", "coronal", "axial"])
@pytest.mark.parametrize("zero_filled", [False, True])
def test_every_vertebral_body_is_found_numbered_and_nothing_else(orientation: str,
                                                                 zero_filled: bool) -> None:
    phantom, result = analysed("normal", orientation, zero_filled=zero_filled)
    localisation = result.localisation
    assert localisation.localised and localisation.method == "image"
    assert localisation.labels == ["V1", "V2", "V3", "V4", "V5"]
    geometry = volume_geometry(phantom)
    heights = []
    for number in range(1, 6):
        found = localisation.bodies == number
        truth_numbers = np.bincount(phantom.vertebra[found], minlength=6)[1:]
        matched = int(np.argmax(truth_numbers)) + 1
        assert matched == number  # the same body, numbered cranio-caudally like the truth
        truth = phantom.vertebra == number
        assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.75
        heights.append(geometry.to_patient(np.argwhere(found).mean(axis=0))[SUPERIOR_INFERIOR])
    assert heights == sorted(heights, reverse=True)  # V1 is the most cranial
    wrong = np.isin(phantom.labels, [ANATOMY_CODES[t] for t in NOT_MARROW]) & localisation.marrow
    assert wrong.sum() == 0
    posterior = localisation.posterior > 0
    assert posterior.any() and not (posterior & (localisation.bodies > 0)).any()
    on_elements = (phantom.posterior[posterior] > 0) | (
        phantom.labels[posterior] == ANATOMY_CODES["cortex"])  # partial volume at the cortex
    assert on_elements.mean() > 0.95 and (phantom.posterior[posterior] > 0).any()


def test_normal_spine_has_no_focus_and_reads_normal_with_t1_standards() -> None:
    _, result = analysed("normal", "sagittal")
    assert result.foci == [] and result.pattern == "normal"
    # this trunk has no sacrum: the bodies keep their V-numbers, and the flag says so
    assert result.flags == ["fat_fraction_ambiguous_above_50", "levels_uncertain"]
    marrow_ip = sum(ANATOMY_TISSUES["marrow"])
    for vertebra in result.vertebrae:
        assert vertebra.pattern == "normal"
        assert vertebra.signal_loss_percent_median == pytest.approx(
            tissue_truth("marrow")["signal_loss_percent"], abs=2.0)
        assert vertebra.fraction_below_threshold < 0.01
        assert vertebra.in_phase_to_muscle_ratio == pytest.approx(
            marrow_ip / sum(ANATOMY_TISSUES["muscle"]), rel=0.05)
        assert vertebra.in_phase_to_disc_ratio == pytest.approx(
            marrow_ip / sum(ANATOMY_TISSUES["disc"]), rel=0.05)
    # Discs, canal and muscle lose less than the threshold: foci there would be easy to make.
    for tissue in ("disc", "csf", "muscle"):
        assert tissue_truth(tissue)["signal_loss_percent"] < THRESHOLD
    assert result.marrow_summary is not None
    assert result.marrow_summary["signal_loss_percent_median"] == pytest.approx(70.6, abs=2)


@pytest.mark.parametrize("orientation", ["sagittal", "axial"])
@pytest.mark.parametrize("snr", [None, 25])
def test_infiltrative_focus_is_the_only_focus_with_its_vertebra_and_category(
        orientation: str, snr: float | None) -> None:
    phantom, result = analysed("infiltrative_focus", orientation, snr)
    (focus,) = result.foci
    record = focus_record(focus, volume_geometry(phantom), THRESHOLD, result.localisation.labels,
                          0.5)
    lesion = phantom.lesion_masks["infiltrative_focus"]
    assert (focus.mask & ~lesion).sum() <= 0.1 * focus.mask.sum()
    assert (focus.mask & lesion).sum() >= 0.4 * lesion.sum()  # edge voxels: partial volume
    assert record["vertebra"] == "V3" and record["category"] == "low_signal_loss"
    assert record["below_threshold"] and record["margin"] == "sharp"
    truth_loss = tissue_truth("lesion")["signal_loss_percent"]
    assert record["signal_loss_percent"] == pytest.approx(truth_loss,
                                                          abs=0.1 if snr is None else 4.0)
    geometry = volume_geometry(phantom)
    centre = geometry.to_patient(np.argwhere(lesion).mean(axis=0))
    assert np.linalg.norm(np.array(record["centroid_patient_mm"]) - centre) < 5.0
    voxel = float(np.prod(geometry.spacing_mm))
    assert record["volume_mm3"] == pytest.approx(focus.mask.sum() * voxel)
    assert record["in_phase_to_marrow_ratio"] < 0.9  # darker than marrow on T1
    assert result.pattern == "focal"
    assert [v.pattern for v in result.vertebrae] == ["normal", "normal", "focal", "normal",
                                                     "normal"]


@pytest.mark.parametrize("orientation", ["sagittal", "axial"])
def test_fat_rich_focus_is_fat_containing_not_worrying(orientation: str) -> None:
    phantom, result = analysed("fat_focus", orientation)
    (focus,) = result.foci
    record = focus_record(focus, volume_geometry(phantom), THRESHOLD, result.localisation.labels,
                          0.5)
    assert record["vertebra"] == "V2" and record["category"] == "fat_containing"
    assert record["in_phase_to_marrow_ratio"] > 1.05  # brighter than marrow on in-phase
    assert (focus.mask & phantom.lesion_masks["fat_focus"]).sum() > 0.5 * focus.mask.sum()


@pytest.mark.parametrize("orientation", ["sagittal", "axial"])
def test_diffuse_replacement_is_seen_and_called_diffuse(orientation: str) -> None:
    """Marrow that lost its fat shows no loss anywhere: only the bone around it (void cortex)
    localises it, and every vertebra is then below the threshold: diffuse, darker than
    muscle on T1, and no focus (a whole vertebra is not a focus)."""
    _, result = analysed("diffuse", orientation, zero_filled=True)
    assert result.localisation.localised and len(result.vertebrae) == 5
    assert result.pattern == "diffuse" and result.foci == []
    assert all(v.pattern == "diffuse" and v.fraction_below_threshold > 0.8
               for v in result.vertebrae)
    assert "marrow_darker_than_muscle" in result.flags
    assert all(v.in_phase_to_muscle_ratio < 1.0 for v in result.vertebrae)


@pytest.mark.parametrize("orientation", ["sagittal", "axial"])
def test_a_field_of_view_without_a_spine_claims_no_marrow(orientation: str) -> None:
    phantom, result = analysed("thigh", orientation)
    assert not result.localisation.localised
    assert "no spine" in result.localisation.reason
    assert "marrow_not_localised" in result.flags
    assert result.vertebrae == [] and result.foci == [] and result.pattern == "not_assessed"
    assert not result.localisation.marrow.any()
    # Maps are still made: the femur's fatty marrow and the muscle have their loss.
    femur = phantom.labels == ANATOMY_CODES["yellow_marrow"]
    assert np.nanmedian(result.signal_loss[femur]) == pytest.approx(
        tissue_truth("yellow_marrow")["signal_loss_percent"], abs=3)


def _near_threshold_phantom() -> AnatomicalPhantom:
    """The infiltrative focus with a little fat: 23.5 % loss, just above 20 %."""
    phantom = anatomical_phantom("infiltrative_focus", supersample=1)
    lesion = phantom.lesion_masks["infiltrative_focus"]
    phantom.water[lesion], phantom.fat[lesion] = 0.45, 0.06
    return phantom


@pytest.mark.parametrize("in_phase_first, category", [(True, "indeterminate"), (False, None)])
def test_in_phase_first_foci_within_the_t2star_margin_are_indeterminate(
        in_phase_first: bool, category: str | None) -> None:
    phantom = _near_threshold_phantom()
    echoes = phantom.echoes()
    result = analyse_set(echoes["in_phase"], echoes["opposed_phase"],
                         (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm), 1.5,
                         geometry=volume_geometry(phantom), in_phase_first=in_phase_first)
    if category is None:  # opposed-phase first: 23.5 % is above the threshold, no focus
        assert result.foci == []
        return
    (focus,) = result.foci
    assert focus.category == category
    assert abs(focus.signal_loss_percent - THRESHOLD) < 6.0


def test_a_focus_fading_into_the_marrow_has_an_ill_defined_margin() -> None:
    """Fat rising linearly from a 5 mm core to normal marrow over 12 mm: a focus, but no
    sharp border (the sharp sphere above reads 'sharp'). The core is wide enough to be a
    focal lesion (5 mm across); a narrower one would be a micronodule."""
    phantom = anatomical_phantom("infiltrative_focus", supersample=1)
    lesion = phantom.lesion_masks["infiltrative_focus"]
    spacing = np.array([phantom.slice_thickness_mm, *phantom.pixel_spacing_mm])
    centre = np.argwhere(lesion).mean(axis=0)
    index = np.indices(lesion.shape).reshape(3, -1).T
    distance = np.linalg.norm((index - centre) * spacing, axis=1).reshape(lesion.shape)
    body = phantom.vertebra == 3
    blend = np.clip((distance - 5.0) / 12.0, 0.0, 1.0)[body]
    (w_lesion, f_lesion), (w_marrow, f_marrow) = (ANATOMY_TISSUES["lesion"],
                                                  ANATOMY_TISSUES["marrow"])
    phantom.water[body] = w_lesion + (w_marrow - w_lesion) * blend
    phantom.fat[body] = f_lesion + (f_marrow - f_lesion) * blend
    echoes = phantom.echoes()
    result = analyse_set(echoes["in_phase"], echoes["opposed_phase"], tuple(spacing), 1.5,
                         geometry=volume_geometry(phantom))
    (focus,) = result.foci
    record = focus_record(focus, volume_geometry(phantom), THRESHOLD, result.localisation.labels,
                          0.5)
    assert record["vertebra"] == "V3" and record["margin"] == "ill_defined"
