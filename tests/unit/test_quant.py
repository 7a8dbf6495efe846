"""quant/: maps, noise floor, body, thresholds and fat-fraction methods against the anatomical
phantom's analytic truth (findings inside the marrow: test_marrow.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from marrownode.quant.analysis import QuantParameters, analyse_set
from marrownode.quant.body import find_body
from marrownode.quant.maps import (
    fat_fraction_two_point,
    fat_fraction_water_fat,
    signal_intensity_ratio,
    signal_loss_percent,
)
from marrownode.quant.roi import roi_statistics
from marrownode.quant.thresholds import select_threshold
from marrownode.synthetic.anatomy import (
    ANATOMY_CODES,
    ANATOMY_TISSUES,
    anatomical_phantom,
    tissue_truth,
)

SPACING = (4.0, 2.0, 2.0)


def run(phantom, snr=None, seed=0, field=1.5, water_fat=True, **kwargs):
    echoes = phantom.echoes(snr=snr, seed=seed)
    return echoes, analyse_set(
        echoes["in_phase"], echoes["opposed_phase"],
        (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm), field,
        echoes["water"] if water_fat else None, echoes["fat"] if water_fat else None, **kwargs,
    )


def test_noiseless_maps_are_exact_per_tissue() -> None:
    phantom = anatomical_phantom("fat_focus", supersample=1)  # no partial volume
    _, result = run(phantom)
    for tissue in ANATOMY_TISSUES:
        region = phantom.labels == ANATOMY_CODES[tissue]
        if not region.any():
            continue
        if sum(ANATOMY_TISSUES[tissue]) == 0:  # background and cortex: no signal, no map
            assert np.isnan(result.signal_loss[region]).all()
            assert not result.tissue[region].any()
            continue
        expected = tissue_truth(tissue)
        assert np.allclose(result.signal_loss[region], expected["signal_loss_percent"], atol=0.1)
        assert np.allclose(result.sir[region], expected["sir"], atol=0.001)
        assert np.allclose(result.fat_fraction[region], expected["fat_fraction_percent"], atol=0.1)
    assert result.fat_fraction_method == "water_fat"
    assert "fat_fraction_ambiguous_above_50" not in result.flags


def test_signal_fat_fraction_assumes_water_dominance_and_says_so() -> None:
    phantom = anatomical_phantom("normal", supersample=1)
    _, result = run(phantom, water_fat=False)
    assert result.fat_fraction_method == "signal_fat_fraction"
    assert "fat_fraction_ambiguous_above_50" in result.flags
    marrow = phantom.labels == ANATOMY_CODES["marrow"]
    # 65 % fat reads as 35 %: the branch the flag warns about.
    assert tissue_truth("marrow")["fat_fraction_percent"] == pytest.approx(64.7, abs=0.1)
    assert np.allclose(result.fat_fraction[marrow], 100 - 64.7, atol=0.1)
    muscle = phantom.labels == ANATOMY_CODES["muscle"]
    assert np.allclose(result.fat_fraction[muscle],
                       tissue_truth("muscle")["fat_fraction_percent"], atol=0.1)


def test_scanner_pdff_is_used_when_present_and_named() -> None:
    phantom = anatomical_phantom("normal", supersample=1)
    echoes = phantom.echoes()
    pdff = np.full(phantom.labels.shape, 42.0, dtype=np.float32)
    result = analyse_set(echoes["in_phase"], echoes["opposed_phase"], SPACING, 1.5,
                         echoes["water"], echoes["fat"], scanner_pdff=pdff)
    assert result.fat_fraction_method == "scanner_pdff"
    assert np.allclose(result.fat_fraction[result.tissue], 42.0)
    assert np.isnan(result.fat_fraction[~result.tissue]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_snr30_roi_values_within_one_point_of_truth(seed: int) -> None:
    phantom = anatomical_phantom("infiltrative_focus", supersample=1)
    echoes, result = run(phantom, snr=30, seed=seed)
    assert result.noise_source == "background"
    assert result.noise_sigma == pytest.approx(1000 / 30, rel=0.1)
    maps = {"fat_fraction_percent": result.fat_fraction}
    for tissue in ("lesion", "marrow", "muscle"):
        region = phantom.labels == ANATOMY_CODES[tissue]
        stats = roi_statistics(region, maps, echoes["in_phase"], echoes["opposed_phase"], 16.0)
        expected = tissue_truth(tissue)
        assert stats["signal_loss_ratio_of_means_percent"] == pytest.approx(
            expected["signal_loss_percent"], abs=1.0)
        if tissue == "marrow":  # a near-zero fat image is lifted by Rician noise elsewhere
            assert stats["maps"]["fat_fraction_percent"]["mean"] == pytest.approx(
                expected["fat_fraction_percent"], abs=1.0)


@pytest.mark.parametrize("zero_filled", [False, True])
def test_body_and_noise_floor_on_noisy_and_zero_filled_backgrounds(zero_filled: bool) -> None:
    """A zero-filled background has no noise to measure: the noise then comes from the tissue,
    and the body is found either way; outside it every map is undefined."""
    phantom = anatomical_phantom("normal", "axial", zero_filled=zero_filled)
    echoes, result = run(phantom, snr=25, seed=4)
    truth_body = phantom.labels != ANATOMY_CODES["background"]
    dice = 2 * (result.body & truth_body).sum() / (result.body.sum() + truth_body.sum())
    assert dice > 0.98
    assert result.noise_source == ("tissue_residual" if zero_filled else "background")
    assert result.noise_sigma == pytest.approx(40.0, rel=0.25)
    assert np.isnan(result.signal_loss[~result.body]).all()
    assert not result.tissue[~truth_body].any()
    body = find_body(echoes["in_phase"].astype(np.float32))
    assert np.array_equal(body.body, result.body)


@pytest.mark.parametrize("snr", [None, 12])
def test_water_fat_disagreement_raises_the_swap_flag_only_then(snr: int | None) -> None:
    """At SNR 12, where each image carries its own noise, W + F and IP disagree by 0.18 of
    the signal from noise alone: that is no mismatch (the flag was raised on every such
    study), and a mislabelled series is still one."""
    phantom = anatomical_phantom("normal")
    echoes = phantom.echoes() if snr is None else phantom.echoes(snr=snr, seed=1)
    good = analyse_set(echoes["in_phase"], echoes["opposed_phase"], SPACING, 1.5,
                       echoes["water"], echoes["fat"])
    assert "water_fat_swap_suspected" not in good.flags
    assert good.water_fat_check.sum_error == pytest.approx(
        good.water_fat_check.noise_error, rel=0.2)
    # A fat image that is really the in-phase image (mislabelled series): W + F != IP.
    bad = analyse_set(echoes["in_phase"], echoes["opposed_phase"], SPACING, 1.5,
                      echoes["water"], echoes["in_phase"])
    assert "water_fat_swap_suspected" in bad.flags
    assert bad.water_fat_check.sum_error > 0.1


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
    phantom = anatomical_phantom("infiltrative_focus")
    _, result = run(phantom, field=1.0, parameters=QuantParameters(thresholds=((1.0, 18.0),)))
    assert result.threshold_percent == 18.0 and result.threshold_field_strength_t == 1.0
    assert len(result.foci) == 1
    _, result = run(phantom, field=2.0)
    assert result.threshold_percent is None
    assert "no_threshold_for_field_strength" in result.flags and result.foci == []
    assert result.pattern == "not_assessed"


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


def test_the_fast_mask_operations_are_the_slow_ones_exactly() -> None:
    """The localiser's shortcuts (issue 24's time to result) change no voxel: holes filled by
    one labelling of the background equal scipy's fill slice by slice, and 'the 5x5 (3x3)
    median reaches T' counted as 'more than half the window reaches T' equals the median's
    answer, borders included, on masks and values shaped like anatomy and like noise."""
    from scipy import ndimage

    from marrownode.quant.body import fill_holes_per_slice
    from marrownode.quant.masks import median_reaches

    rng = np.random.default_rng(7)
    rows, columns = np.mgrid[0:64, 0:80]
    ring = np.abs(np.hypot(rows - 30, columns - 40) - 15) < 2  # a cortex around marrow
    for trial in range(60):
        shape = (int(rng.integers(1, 6)), int(rng.integers(2, 40)), int(rng.integers(2, 40)))
        mask = rng.random(shape) < rng.uniform(0.2, 0.8)
        expected = np.stack([ndimage.binary_fill_holes(s) for s in mask])
        assert (fill_holes_per_slice(mask) == expected).all(), trial
        values = rng.normal(25, 15, shape).astype(np.float32)
        for size in (3, 5):
            median = ndimage.median_filter(values, size=(1, size, size))
            assert (median_reaches(values, 20.0, size) == (median >= 20.0)).all(), (trial, size)
    framed = np.stack([ring, ring & (columns < 50), ring | (rng.random(ring.shape) < 0.3)])
    assert (fill_holes_per_slice(framed)
            == np.stack([ndimage.binary_fill_holes(s) for s in framed])).all()
    assert fill_holes_per_slice(framed)[0, 30, 40] and not fill_holes_per_slice(framed)[1, 30, 40]


def test_the_opening_in_the_masks_box_is_the_opening_on_the_whole_grid() -> None:
    """The ball opening works inside the mask's box (issue 28's localiser time): the same
    voxels as the two distance transforms on the whole grid, anisotropic spacing included."""
    from scipy import ndimage

    from marrownode.quant.bone import opening

    def whole_grid(mask: np.ndarray, radius: float, spacing: tuple[float, float, float]
                   ) -> np.ndarray:
        padded = np.pad(mask, 1)
        eroded = ndimage.distance_transform_edt(padded, sampling=spacing) > radius
        opened = ndimage.distance_transform_edt(~eroded, sampling=spacing) <= radius
        return opened[1:-1, 1:-1, 1:-1] & mask

    rng = np.random.default_rng(11)
    for trial in range(12):
        mask = np.zeros((20, 60, 70), dtype=bool)
        for _ in range(4):  # blobs of bone, some at the grid's edge
            centre = rng.integers(0, (20, 60, 70))
            radius = rng.uniform(3, 12, 3)
            z, y, x = np.ogrid[:20, :60, :70]
            mask |= (((z - centre[0]) / radius[0]) ** 2 + ((y - centre[1]) / radius[1]) ** 2
                     + ((x - centre[2]) / radius[2]) ** 2) <= 1
        mask &= rng.random(mask.shape) > 0.05
        spacing = (4.0, 0.9, 0.9) if trial % 2 else (1.5, 1.5, 1.5)
        for radius_mm in (4.0, 6.0):
            assert (opening(mask, radius_mm, spacing) == whole_grid(mask, radius_mm, spacing)
                    ).all(), (trial, radius_mm)
