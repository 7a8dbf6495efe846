"""quant/: maps, thresholds, flags and foci against phantoms with analytic truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from marrownode.quant.analysis import QuantParameters, analyse_set
from marrownode.quant.foci import FocusParameters
from marrownode.quant.maps import (
    fat_fraction_two_point,
    fat_fraction_water_fat,
    signal_intensity_ratio,
    signal_loss_percent,
)
from marrownode.quant.masks import estimate_noise_sigma, tissue_mask
from marrownode.quant.roi import roi_statistics
from marrownode.quant.thresholds import select_threshold
from marrownode.synthetic.phantom import TISSUE_CODES, TISSUES, spine_phantom, truth

SPACING = (4.0, 2.0, 2.0)


def run(phantom, snr=None, seed=0, field=1.5, water_fat=True, **kwargs):
    echoes = phantom.echoes(snr=snr, seed=seed)
    return echoes, analyse_set(
        echoes["in_phase"], echoes["opposed_phase"],
        (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm), field,
        echoes["water"] if water_fat else None, echoes["fat"] if water_fat else None, **kwargs,
    )


def test_noiseless_maps_are_exact_per_tissue() -> None:
    phantom = spine_phantom()
    _, result = run(phantom)
    for tissue in TISSUES:
        region = phantom.labels == TISSUE_CODES[tissue]
        if not region.any():
            continue
        if tissue == "background":
            assert np.isnan(result.signal_loss[region]).all()
            assert not result.tissue[region].any()
            continue
        expected = truth(tissue)
        assert np.allclose(result.signal_loss[region], expected["signal_loss_percent"], atol=0.1)
        assert np.allclose(result.sir[region], expected["sir"], atol=0.001)
        assert np.allclose(result.fat_fraction[region], expected["fat_fraction_percent"], atol=0.1)
    assert result.fat_fraction_method == "water_fat"
    assert result.flags == []


def test_two_point_fat_fraction_assumes_water_dominance_and_says_so() -> None:
    phantom = spine_phantom()
    _, result = run(phantom, water_fat=False)
    assert result.fat_fraction_method == "two_point_water_dominant"
    assert "fat_fraction_ambiguous_above_50" in result.flags
    marrow = phantom.labels == TISSUE_CODES["marrow"]
    # 65 % fat reads as 35 %: the branch the flag warns about.
    assert np.allclose(result.fat_fraction[marrow], 35.0, atol=0.1)
    lesion = phantom.labels == TISSUE_CODES["lesion"]
    assert np.allclose(result.fat_fraction[lesion], 7.0, atol=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snr30_roi_values_within_one_point_of_truth(seed: int) -> None:
    phantom = spine_phantom()
    echoes, result = run(phantom, snr=30, seed=seed)
    assert result.noise_sigma == pytest.approx(1000 / 30, rel=0.1)
    maps = {"fat_fraction_percent": result.fat_fraction}
    for tissue in ("lesion", "marrow", "muscle"):
        region = phantom.labels == TISSUE_CODES[tissue]
        stats = roi_statistics(region, maps, echoes["in_phase"], echoes["opposed_phase"], 16.0)
        expected = truth(tissue)
        assert stats["signal_loss_ratio_of_means_percent"] == pytest.approx(
            expected["signal_loss_percent"], abs=1.0)
        assert stats["sir_ratio_of_means"] == pytest.approx(expected["sir"], abs=0.01)
    marrow = phantom.labels == TISSUE_CODES["marrow"]
    stats = roi_statistics(marrow, maps, echoes["in_phase"], echoes["opposed_phase"], 16.0)
    assert stats["maps"]["fat_fraction_percent"]["mean"] == pytest.approx(65.0, abs=1.0)


def test_water_fat_disagreement_raises_the_swap_flag_only_then() -> None:
    phantom = spine_phantom()
    echoes = phantom.echoes()
    spacing = SPACING
    good = analyse_set(echoes["in_phase"], echoes["opposed_phase"], spacing, 1.5,
                       echoes["water"], echoes["fat"])
    assert "water_fat_swap_suspected" not in good.flags
    # A fat image that is really the in-phase image (mislabelled series): W + F != IP.
    bad = analyse_set(echoes["in_phase"], echoes["opposed_phase"], spacing, 1.5,
                      echoes["water"], echoes["in_phase"])
    assert "water_fat_swap_suspected" in bad.flags
    assert bad.water_fat_check["sum_error"] > 0.1


@pytest.mark.parametrize(
    ("field", "threshold", "flag"),
    [(1.5, 20.0, None), (1.494, 20.0, None), (1.7, 20.0, None), (3.0, 25.0, None),
     (2.9, 25.0, None), (2.0, None, "no_threshold_for_field_strength"),
     (7.0, None, "no_threshold_for_field_strength"), (None, None, "no_field_strength")],
)
def test_threshold_selection(field, threshold, flag) -> None:
    choice = select_threshold(field)
    assert choice.threshold_percent == threshold
    assert choice.flag == flag


def test_configured_thresholds_and_record() -> None:
    phantom = spine_phantom()
    _, result = run(phantom, field=1.0, parameters=QuantParameters(thresholds=((1.0, 18.0),)))
    assert result.threshold_percent == 18.0 and result.threshold_field_strength_t == 1.0
    _, result = run(phantom, field=2.0)
    assert result.threshold_percent is None
    assert "no_threshold_for_field_strength" in result.flags and result.foci == []


@pytest.mark.parametrize("snr", [None, 30])
def test_lesion_in_marrow_is_the_only_focus(snr) -> None:
    phantom = spine_phantom()
    _, result = run(phantom, snr=snr)
    assert len(result.foci) == 1, [f["centroid_voxel"] for f in result.foci]
    focus, mask = result.foci[0], result.focus_masks[0]
    lesion = phantom.labels == TISSUE_CODES["lesion"]
    overlap = (mask & lesion).sum() / lesion.sum()
    assert overlap > 0.9 and (mask & ~lesion).sum() / mask.sum() < 0.05
    expected = truth("lesion")
    tolerance = 0.1 if snr is None else 1.5
    assert focus["signal_loss_percent"] == pytest.approx(expected["signal_loss_percent"],
                                                         abs=tolerance)
    assert focus["sir"] == pytest.approx(expected["sir"], abs=tolerance / 100)
    assert focus["below_threshold"] is True
    assert focus["slice_count"] == len(set(np.nonzero(lesion)[0]))
    if snr is None:
        assert focus["volume_mm3"] == pytest.approx(lesion.sum() * 16.0)
        assert focus["area_mm2"] == pytest.approx(lesion.sum(axis=(1, 2)).max() * 4.0)
        assert focus["fat_fraction_percent"] == pytest.approx(7.0, abs=0.1)
    centre = phantom.lesion_centres[0]
    assert np.allclose(focus["centroid_voxel"], centre, atol=1.0)


def test_no_focus_without_lesion_muscle_fat_discs_background_excluded() -> None:
    phantom = spine_phantom(lesion=False)
    for snr in (None, 20):
        _, result = run(phantom, snr=snr)
        assert result.foci == []
    # Muscle and discs are below the threshold, so they are candidates that the shell rejects.
    loss = run(phantom)[1].signal_loss
    assert np.nanmax(loss[phantom.labels == TISSUE_CODES["disc"]]) < 20
    assert np.nanmax(loss[phantom.labels == TISSUE_CODES["muscle"]]) < 20


def test_minimum_focus_size_is_configurable() -> None:
    phantom = spine_phantom()
    lesion_volume = (phantom.labels == TISSUE_CODES["lesion"]).sum() * 16.0
    params = QuantParameters(foci=FocusParameters(min_volume_mm3=lesion_volume + 1))
    _, result = run(phantom, parameters=params)
    assert result.foci == []


def test_noise_estimate_from_air_is_not_a_fixed_number() -> None:
    rng = np.random.default_rng(5)
    for sigma in (5.0, 50.0):
        image = np.zeros((4, 64, 64))
        image[:, 16:48, 16:48] = 1000
        real = image + rng.normal(0, sigma, image.shape)
        noisy = np.hypot(real, rng.normal(0, sigma, image.shape))
        assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.1)
        mask = tissue_mask(noisy)
        assert mask[:, 16:48, 16:48].mean() > 0.99 and mask[:, :8, :].mean() < 0.001


# Magnitudes as a scanner stores them: zero or at least a millionth of a unit.
finite = st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e6))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
    data=st.data(),
)
def test_maps_never_leak_nan_into_tissue_nor_warn(shape, data) -> None:
    ip = data.draw(arrays(np.float64, shape, elements=finite))
    op = data.draw(arrays(np.float64, shape, elements=finite))
    water = data.draw(arrays(np.float64, shape, elements=finite))
    fat = data.draw(arrays(np.float64, shape, elements=finite))
    mask = ip > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = signal_loss_percent(ip, op, mask)
        sir = signal_intensity_ratio(ip, op, mask)
        ff2 = fat_fraction_two_point(ip, op, mask)
        ffw = fat_fraction_water_fat(water, fat, mask)
        result = analyse_set(ip, op, SPACING, 1.5, water, fat)
    for values in (loss, sir, ff2):
        assert np.isfinite(values[mask]).all()
        assert np.isnan(values[~mask]).all()
    assert np.isfinite(ffw[mask & (water + fat > 0)]).all()
    assert np.isfinite(result.signal_loss[result.tissue]).all()
    assert np.isnan(result.signal_loss[~result.tissue]).all()
    # Maps are float32: agreement to 1e-4 percentage points (and float32 relative precision).
    assert np.allclose(loss[mask], 100 * (1 - sir[mask].astype(np.float64)), rtol=1e-5, atol=1e-4)
