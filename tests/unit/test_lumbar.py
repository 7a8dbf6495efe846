"""The spine as it is read, on a sagittal lumbar phantom built from the anatomy (lordosis,
tilted bodies, 1 mm cortex and endplates, biconvex discs with annulus, basivertebral veins,
the fused tilted sacrum, neural arches; 0.75 mm pixels, 4 mm slices): one body per level,
named from the sacrum, no normal anatomy called a focus, a metastasis one focus at its level.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from marrownode.config import Settings
from marrownode.pipeline import process_paths
from marrownode.quant.analysis import QuantResult
from marrownode.synthetic.lumbar import LumbarPhantom, column, lumbar_phantom
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets
from tests.lumbar import analyse_phantom

#: A level is in view when at least this much of its marrow is (S3 is mostly outside).
IN_VIEW_VOXELS = 2000


@cache
def analysed(variant: str, orientation: str = "sagittal") -> tuple[LumbarPhantom, QuantResult]:
    phantom = lumbar_phantom(variant, orientation)
    result, _ = analyse_phantom(phantom, 60, 3, orientation)
    return phantom, result


def _levels_of_bodies(phantom: LumbarPhantom, result: QuantResult) -> list[set[str]]:
    """For each localised body, the truth levels whose marrow it holds (more than a rim)."""
    found = []
    for number in range(1, len(result.localisation.labels) + 1):
        truth = phantom.vertebra[result.localisation.bodies == number]
        numbers, counts = np.unique(truth[truth > 0], return_counts=True)
        found.append({phantom.level_names[int(n)] for n, c in zip(numbers, counts, strict=True)
                      if c > 200})
    return found


def _in_view(phantom: LumbarPhantom) -> list[str]:
    numbers, counts = np.unique(phantom.vertebra[phantom.vertebra > 0], return_counts=True)
    return [phantom.level_names[int(n)] for n, c in zip(numbers, counts, strict=True)
            if c >= IN_VIEW_VOXELS]


def test_the_phantom_is_built_from_the_anatomy() -> None:
    """Lordosis (the column's apex anterior at L3-L4, L1 and L5 behind it), the sacrum tilted
    back past L5, fused segments with thin remnants where the lumbar discs are thick."""
    segments = {s.name: s for s in column()}
    depth = {name: s.centre[1] for name, s in segments.items()}  # y: posterior positive
    assert depth["L4"] < depth["L1"] and depth["L4"] < depth["L5"] < depth["S1"]
    tilt = {name: np.degrees(np.arctan2(-s.axis[1], s.axis[2])) for name, s in segments.items()}
    assert tilt["S1"] - tilt["L5"] > 15.0
    assert segments["S1"].disc_below < 3.0 < segments["L4"].disc_below


@pytest.mark.parametrize("variant", ["normal", "metastasis_centre", "metastasis_off_centre",
                                     "multifocal", "haemangioma", "modic_1", "modic_2",
                                     "diffuse", "transitional", "variegated"])
def test_one_body_per_level_in_view(variant: str) -> None:
    """Every localised body is one level, and every level in view has one body: a lesion
    in the middle of L1 no longer splits it into a left and a right 'vertebra'."""
    phantom, result = analysed(variant)
    levels = _levels_of_bodies(phantom, result)
    assert all(len(found) == 1 for found in levels), levels
    assert [next(iter(found)) for found in levels] == _in_view(phantom)


def _dice_per_level(phantom: LumbarPhantom, result: QuantResult) -> dict[str, float]:
    names = result.localisation.levels
    number_of = {name: number for number, name in phantom.level_names.items()}
    dice = {}
    for found_number, name in enumerate(names, start=1):
        found = result.localisation.bodies == found_number
        truth = phantom.vertebra == number_of[name]
        dice[name] = float(2 * (found & truth).sum() / (found.sum() + truth.sum()))
    return dice


@pytest.mark.parametrize("variant, least", [("normal", 0.93), ("metastasis_centre", 0.93),
                                            ("diffuse", 0.70)])
def test_each_body_reaches_its_cortex(variant: str, least: float) -> None:
    """Each body is its marrow up to the cortex and endplates (blocks and hulls alone stop a
    few millimetres short), also where the marrow is replaced and dark."""
    phantom, result = analysed(variant)
    assert min(_dice_per_level(phantom, result).values()) >= least


@pytest.mark.parametrize("variant", ["metastasis_centre", "metastasis_off_centre",
                                     "multifocal", "haemangioma"])
def test_a_lesion_lies_inside_its_body(variant: str) -> None:
    """A lesion, central or against the cortex, is part of its level's body (all of it)."""
    phantom, result = analysed(variant)
    names = result.localisation.levels
    for name, mask in phantom.lesion_masks.items():
        number = names.index(phantom.lesion_levels[name]) + 1
        assert (result.localisation.bodies[mask] == number).mean() >= 0.99, name


@pytest.mark.parametrize("variant", ["normal", "metastasis_centre", "multifocal", "diffuse"])
def test_levels_are_named_from_the_sacrum(variant: str) -> None:
    phantom, result = analysed(variant)
    localisation = result.localisation
    assert localisation.levels == _in_view(phantom)
    assert "sacrum" in localisation.levels_reason
    assert "levels_uncertain" not in result.flags


def test_a_transitional_spine_keeps_its_v_numbers() -> None:
    """Six lumbar-type bodies: naming upward from S1 would call L6 'L5'. Never a guess."""
    _, result = analysed("transitional")
    assert result.localisation.levels == [None] * len(result.localisation.labels)
    assert "levels_uncertain" in result.flags


@pytest.mark.parametrize("variant", ["normal", "modic_1", "modic_2"])
def test_normal_anatomy_is_not_a_focus(variant: str) -> None:
    """Basivertebral veins (a fluid notch in the middle of each posterior wall), endplates,
    discs with their annulus, the arches beside subcutaneous fat, a fatty (Modic 2) or
    oedematous (Modic 1) endplate band: no focus, and no micronodule either."""
    _, result = analysed(variant)
    assert result.foci == [] and result.pattern == "normal"
    assert result.micronodules == {}


def test_an_oedematous_endplate_band_is_an_endplate_finding() -> None:
    """Modic type 1 on both sides of the L4-L5 disc: two endplate findings, L4 inferior and
    L5 superior, about as thick as the bands (7 mm, less the endplate), low loss."""
    _, result = analysed("modic_1")
    names = result.localisation.levels
    found = sorted((names[band.vertebra - 1], band.endplate) for band in result.endplate_bands)
    assert found == [("L4", "inferior"), ("L5", "superior")]
    for band in result.endplate_bands:
        assert 3.0 <= band.thickness_mm <= 8.0
        assert band.signal_loss_percent < result.threshold_percent
    assert {v.label for v in result.vertebrae if v.endplate_bands} == {
        result.localisation.labels[band.vertebra - 1] for band in result.endplate_bands}


def test_endplate_findings_reach_report_json(tmp_path) -> None:
    """Through `process`: report.json lists each band under its vertebra's
    endplate_findings, and no focus."""
    write_datasets(build_study(StudyOptions(style="siemens", study_key="lumbar-modic", snr=60),
                               lumbar_phantom("modic_1")), tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    (dixon_set,) = report["studies"][0]["dixon_sets"]
    findings = {v["level"]: [band["endplate"] for band in v["endplate_findings"]]
                for v in dixon_set["vertebrae"]}
    assert findings == {"L1": [], "L2": [], "L3": [], "L4": ["inferior"],
                        "L5": ["superior"], "S1": [], "S2": []}
    assert dixon_set["foci"] == [] and dixon_set["pattern"] == "normal"


def test_the_normal_spine_has_no_endplate_band() -> None:
    _, result = analysed("normal")
    assert result.endplate_bands == []


@pytest.mark.parametrize("variant, levels", [("metastasis_centre", ["L1"]),
                                             ("metastasis_off_centre", ["L3"]),
                                             ("multifocal", ["L1", "L3", "L5"])])
def test_each_metastasis_is_one_focus_at_its_level(variant: str, levels: list[str]) -> None:
    """A metastasis in the middle of its body or off-centre against the cortex: one focus
    each, at its own level, covering the truth lesion."""
    phantom, result = analysed(variant)
    names = result.localisation.levels
    assert sorted(names[f.vertebra - 1] for f in result.foci) == levels
    for focus in result.foci:
        lesion = next(mask for name, mask in phantom.lesion_masks.items()
                      if phantom.lesion_levels[name] == names[focus.vertebra - 1])
        assert (focus.mask & lesion).sum() > 0.5 * lesion.sum()


def test_a_haemangioma_is_fat_containing() -> None:
    """A fatty haemangioma in L2: one region, called fat-containing, not a worrying focus."""
    _, result = analysed("haemangioma")
    (focus,) = result.foci
    assert result.localisation.levels[focus.vertebra - 1] == "L2"
    assert focus.category == "fat_containing"


def test_a_metastasis_is_one_focus_at_its_level_through_the_pipeline(tmp_path) -> None:
    """A 13 mm metastasis in the middle of L1, through `process`: one focus, at L1, inside
    the one L1 body; report.json names every vertebra's level."""
    phantom = lumbar_phantom("metastasis_centre")
    write_datasets(build_study(StudyOptions(style="siemens", study_key="lumbar-l1", snr=60),
                               phantom), tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    (dixon_set,) = report["studies"][0]["dixon_sets"]
    assert [v["level"] for v in dixon_set["vertebrae"]] == _in_view(phantom)
    (focus,) = dixon_set["foci"]
    assert focus["level"] == "L1" and focus["vertebra"] == "V1"
    assert focus["category"] == "low_signal_loss"
    assert "sacrum" in dixon_set["marrow"]["levels_reason"]
    _levels_are_coded_in_the_sr_and_seg(dixon_set, tmp_path / "out")


def _levels_are_coded_in_the_sr_and_seg(dixon_set: dict, out) -> None:
    """The SR's vertebra groups and the focus carry the level's SNOMED CT code (CID 7603;
    the sacrum for S1 and S2) as finding site, and the SEG names and types each body by its
    level, so that a reader of vertebra-coded SEGs (ours: requests/read.py) finds L1...L5."""
    from pydicom import dcmread

    from marrownode.requests.read import _vertebra

    paths = {e["kind"]: out / e["path"] for e in dixon_set["outputs"]}
    codes = set()
    pending = list(dcmread(paths["sr"]).ContentSequence)
    while pending:  # every Finding Site (SCT 363698007) anywhere in the tree
        item = pending.pop()
        pending.extend(item.get("ContentSequence", []))
        concept = item.get("ConceptNameCodeSequence")
        if concept and concept[0].CodeValue == "363698007":
            code = item.ConceptCodeSequence[0]
            codes.add((str(code.CodeValue), str(code.CodeMeaning)))
    seg = dcmread(paths["segmentation"])
    bodies = [d for d in seg.SegmentSequence if d.SegmentLabel.endswith("vertebral body")]
    assert [d.SegmentLabel.split()[0] for d in bodies] == [
        v["level"] for v in dixon_set["vertebrae"]]
    assert [_vertebra(d) for d in bodies][:5] == ["L1", "L2", "L3", "L4", "L5"]


@pytest.mark.parametrize("variant, pattern", [("normal", "normal"),
                                              ("metastasis_centre", "focal"),
                                              ("multifocal", "multifocal"),
                                              ("diffuse", "diffuse"),
                                              ("variegated", "variegated")])
def test_the_seeds_patterns(variant: str, pattern: str) -> None:
    """One focus is focal, foci at several levels multifocal (the rules in
    docs/marrow-localisation.md)."""
    _, result = analysed(variant)
    assert result.pattern == pattern


def test_spots_under_5_mm_are_not_focal_lesions() -> None:
    """Twenty spots 4.8 mm across in L1-L5: none is reported as a focus (a focal lesion is at
    least 5 mm across in-plane, as whole-body myeloma imaging defines it)."""
    _, result = analysed("variegated")
    assert result.foci == []


def test_the_summary_page_comes_first_and_is_valid(tmp_path) -> None:
    """With [outputs] summary on: one Secondary Capture per set, first in series order
    (series number base + 0), valid per dciodvfy, showing the slice through the focus."""
    import subprocess

    from pydicom import dcmread

    from marrownode.config import settings_from_mapping

    phantom = lumbar_phantom("metastasis_centre")
    write_datasets(build_study(StudyOptions(style="siemens", study_key="lumbar-page", snr=60),
                               phantom), tmp_path / "in")
    settings = settings_from_mapping({"outputs": {"summary": True}})
    report = process_paths([tmp_path / "in"], tmp_path / "out", settings)
    (dixon_set,) = report["studies"][0]["dixon_sets"]
    first = dixon_set["outputs"][0]
    assert first["kind"] == "summary" and first["series_number"] == 9000
    assert sum(e["kind"] == "summary" for e in dixon_set["outputs"]) == 1
    path = tmp_path / "out" / first["path"]
    page = dcmread(path)
    assert page.SeriesDescription.endswith("marrow summary") and page.pixel_array.shape == (
        1000, 1400, 3)
    checked = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True,
                             timeout=120)
    assert not [line for line in (checked.stdout + checked.stderr).splitlines()
                if line.startswith("Error")]


@pytest.mark.parametrize("variant", ["normal", "multifocal", "modic_1"])
def test_the_same_anatomy_on_a_coronal_grid(variant: str) -> None:
    """Coronal 4 mm slices through the bodies: one body per level, named from the sacrum,
    the basivertebral vein seen en face in the body's last slice is no focus, a Modic 1 band
    spans the body's width and is an endplate finding, the central L1 and the L5 metastases
    are foci at their levels."""
    phantom, result = analysed(variant, "coronal")
    assert [next(iter(found)) for found in _levels_of_bodies(phantom, result)] == _in_view(
        phantom)
    names = result.localisation.levels
    assert names == _in_view(phantom)
    expected = {"normal": [], "multifocal": ["L1", "L5"], "modic_1": []}[variant]
    assert sorted(names[f.vertebra - 1] for f in result.foci) == expected
    assert sorted((names[b.vertebra - 1], b.endplate) for b in result.endplate_bands) == (
        [("L4", "inferior"), ("L5", "superior")] if variant == "modic_1" else [])


@pytest.mark.parametrize("variant", ["normal", "multifocal"])
def test_the_same_anatomy_on_an_axial_grid(variant: str) -> None:
    """Axial 6 mm slices: every slice that cuts an endplate holds some disc; that partial
    volume is neither a focus, a micronodule nor an endplate band. No fused sacral segment
    is resolved at 6 mm, so the levels stay V-numbers (never a guess)."""
    phantom, result = analysed(variant, "axial")
    # one body per level, L1 to S2 (S2, tilted back under S1, lies off the straight axis
    # through the lumbar bodies: the column is followed body to body at its ends)
    assert [next(iter(found)) for found in _levels_of_bodies(phantom, result)] == _in_view(
        phantom)
    assert result.endplate_bands == [] and result.micronodules == {}
    truth = [phantom.level_names[int(np.bincount(phantom.vertebra[f.mask]).argmax())]
             for f in result.foci]
    assert sorted(truth) == ({"normal": [], "multifocal": ["L1", "L3", "L5"]}[variant])
    assert "levels_uncertain" in result.flags


def test_the_overlay_names_each_body_beside_it() -> None:
    """Every overlay frame names the bodies it cuts (L1...S2 from the sacrum), each name
    written just in front of its body at the body's height, nowhere else."""
    from marrownode.results.overlay import OverlayRenderer, body_labels

    phantom, result = analysed("normal")
    names = [name or label for name, label in zip(result.localisation.levels,
                                                  result.localisation.labels, strict=True)]
    labels = body_labels(result.localisation.bodies, names)
    middle = len(labels) // 2
    assert [name for name, _ in labels[middle]] == _in_view(phantom)
    renderer = OverlayRenderer(result.signal_loss.shape[1:], (0.0, 1.0), 20.0, 1.5, "")
    args = (phantom.water[middle], result.signal_loss[middle],
            np.zeros(result.signal_loss.shape[1:], dtype=bool),
            result.localisation.marrow[middle], "slice")
    named = renderer.render(*args, labels[middle]).astype(int)
    plain = renderer.render(*args).astype(int)
    changed = np.abs(named - plain).sum(axis=2) > 0
    left = (renderer.canvas_width - renderer.width) // 2
    for _, (row, first) in labels[middle]:
        y, x = int(row * renderer.factor), int(first * renderer.factor) + left
        assert changed[y - 10:y + 10, max(0, x - 40):x].any(), "name before the body"
    rows = np.array([row for _, (row, _) in labels[middle]]) * renderer.factor
    far = np.ones(changed.shape[0], dtype=bool)
    for row in rows:
        far[max(0, int(row) - 20):int(row) + 20] = False
    assert not changed[far].any(), "nothing written away from the bodies"
