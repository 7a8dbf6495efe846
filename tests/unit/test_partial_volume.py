"""A cortex as an MR pixel shows it: each pixel integrates what it covers, so a 1 mm cortex or
endplate on 0.75 mm pixels is a line of partly dark pixels (never void), and with noise many
of them are brighter than the void threshold. Marrow that lost its fat is found only inside
that frame (rule 2): read from the line's mean along it, diffuse replacement is still one
body per level, named from the sacrum; and no disc or annulus becomes a frame of its own."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from marrownode.quant.analysis import QuantResult
from marrownode.quant.bone import dark_lines
from marrownode.quant.localisation import SpineParameters
from marrownode.synthetic.anatomy import ANATOMY_CODES
from marrownode.synthetic.lumbar import LumbarPhantom, lumbar_phantom
from tests.lumbar import analyse_phantom

#: Points per pixel along each in-plane axis: 3 x 3 (and 3 across the slice).
IN_PLANE = 3


@cache
def pixel_phantom(variant: str) -> LumbarPhantom:
    return lumbar_phantom(variant, in_plane=IN_PLANE)


@cache
def analysed(variant: str, snr: float) -> tuple[LumbarPhantom, QuantResult]:
    phantom = pixel_phantom(variant)
    return phantom, analyse_phantom(phantom, snr, 5)[0]


def _truth_levels(phantom: LumbarPhantom, result: QuantResult) -> list[list[str]]:
    """Per localised body, the truth levels holding more than a tenth of its marrow."""
    found = []
    for number in range(1, len(result.localisation.labels) + 1):
        truth = phantom.vertebra[(result.localisation.bodies == number) & (phantom.vertebra > 0)]
        numbers, counts = np.unique(truth, return_counts=True)
        found.append([phantom.level_names[int(n)] for n, c in zip(numbers, counts, strict=True)
                      if c > 0.1 * counts.sum()])
    return found


def test_the_phantom_partial_volumes_its_cortex() -> None:
    """Within the pixel too: of the pixels whose centre is cortex, under a fifth are void
    (point samples: nearly half)."""
    phantom = pixel_phantom("diffuse")
    point = lumbar_phantom("diffuse")
    cortex = point.labels == ANATOMY_CODES["cortex"]
    void = {name: float(((p.water + p.fat)[cortex] < 0.01).mean())
            for name, p in (("points", point), ("pixels", phantom))}
    assert void["points"] > 0.4 and void["pixels"] < 0.2, void


@pytest.mark.parametrize("snr", [20.0, 60.0])
def test_diffuse_replacement_is_one_body_per_level_with_partial_volume(snr: float) -> None:
    """Replaced marrow (no fat, darker than muscle) framed by a partial-volumed cortex: every
    level L1-S2 one body, named, the pattern diffuse. With the void threshold alone the frame
    broke: at SNR 20 only S1-S2 were found, at SNR 60 L4 was missing and no level named."""
    phantom, result = analysed("diffuse", snr)
    assert _truth_levels(phantom, result) == [[n] for n in ("L1", "L2", "L3", "L4", "L5",
                                                            "S1", "S2")]
    assert result.localisation.levels == ["L1", "L2", "L3", "L4", "L5", "S1", "S2"]
    assert result.pattern == "diffuse"


@pytest.mark.parametrize("variant", ["normal", "modic_2"])
def test_no_disc_is_framed_into_a_body_at_low_snr(variant: str) -> None:
    """Normal marrow at SNR 20: no focus. A line threshold too shallow (0.12 of the bright
    end) took a lateral slice's L5-S1 disc, its annulus a thin dark band, into S1 as a 2 %
    'focus' in every spine."""
    _, result = analysed(variant, 20.0)
    assert result.foci == []
    assert result.pattern == "normal"


def test_dark_lines_are_thin_lines_not_dark_regions() -> None:
    """A 1 mm line at half the signal of the marrow around it, lifted by noise, is found along
    its length (straight or diagonal); a dark band 6 pixels wide (an annulus, the canal) and
    the noise of plain marrow are not."""
    rng = np.random.default_rng(3)
    marrow = 400.0
    slab = rng.normal(marrow, 20.0, (2, 80, 80)).astype(np.float32)
    slab[:, 20, 10:70] = marrow * 0.45 + rng.normal(0, 20.0, 60)
    for i in range(50):
        slab[1, 25 + i, 15 + i] = marrow * 0.45
    slab[:, 50:56, 10:70] = marrow * 0.5
    limits = SpineParameters()
    found = dark_lines(slab, 1000.0, limits.cortex_line_depth, limits.cortex_line_ceiling)
    assert found[:, 20, 14:66].mean() > 0.9
    along = range(3, 20)  # before it enters the band
    assert found[1, [25 + i for i in along], [15 + i for i in along]].mean() > 0.9
    assert found[0, 51:55, 14:66].mean() < 0.05  # inside the band: no line
    assert found[0, 60:78, 2:78].mean() < 0.01


def test_a_metastasis_on_thick_slices_is_given_back_to_its_body() -> None:
    """9 x 5 mm slices of 288 x 288 at 1 mm with partial volume, SNR 40: on the midline slice
    the frame closed over the vein's notch and the discs' annuli holds L1, its discs and its
    neighbours at once, and the metastasis in L1 was left out of its body (no focus at all:
    the spine read as normal). Each body now takes the shared part inside its own outline:
    one focus, at the level of the lesion."""
    phantom = lumbar_phantom("metastasis_centre", grid=((9, 288, 288), 1.0, 5.0),
                             in_plane=IN_PLANE)
    result, _ = analyse_phantom(phantom, 40, 5)
    assert len(result.foci) == 1
    focus = result.foci[0]
    lesion = phantom.lesion_masks["metastasis"]
    assert (focus.mask & lesion).sum() > 0.5 * focus.mask.sum()
    levels = _truth_levels(phantom, result)
    assert levels[focus.vertebra - 1] == [phantom.lesion_levels["metastasis"]] == ["L1"]
    assert result.pattern == "focal"
