"""Issue 26: the post-contrast twin and the fat-suppressed series join their Dixon set.

Header-only recognition across the vendor styles; then whole studies from the lumbar phantom
(a Dixon set, its post-contrast twin, a STIR on its own slice grid) whose enhancement and
fat-suppressed ratios are known per tissue (synthetic/companions.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from marrownode.config import load_settings
from marrownode.dixon.companions import fat_suppressed_fluid, plan
from marrownode.dixon.header import summarise
from marrownode.dixon.roles import classify, frames_from_header
from marrownode.dixon.sets import assemble
from marrownode.pipeline import process_paths
from marrownode.results.summary import (
    enhancement_finding,
    fat_saturation_finding,
    pattern_meaning,
    sharp_margin_finding,
)
from marrownode.synthetic.companions import (
    enhancement_truth,
    post_contrast_twin,
    stir_ratio_truth,
    stir_series,
)
from marrownode.synthetic.dataset import StudyOptions
from marrownode.synthetic.lumbar import lumbar_phantom
from marrownode.synthetic.phantom import spine_phantom
from marrownode.synthetic.studies import build_study, extra_series, write_datasets
from marrownode.vocabulary import PATTERN_MEANINGS, Pattern

SMALL = spine_phantom(slices=4, rows=32, cols=24)


def _plan(datasets: list[Dataset]) -> Any:
    """Recognition from the headers alone (no pixel is read)."""
    frames = [f for ds in datasets for f in frames_from_header(summarise(ds))]
    return plan(assemble(classify(frames)).sets, frames)


@pytest.mark.parametrize(("style", "agent", "suffix"), [
    ("siemens", "Gadovist", ""),  # the agent in the header, no word
    ("siemens_xa", "", " KM"),  # German protocols: Kontrastmittel
    ("ge_lava", "", " +C"),
    ("philips_mdixon", "Dotarem", " post"),
    ("anonymised_dual_echo", "", " Gd"),
])
def test_a_post_contrast_dixon_is_its_pre_contrast_sets_twin(style: str, agent: str,
                                                              suffix: str) -> None:
    """Vendor by vendor, with and without Contrast/Bolus Agent: one set is analysed, the
    post-contrast acquisition is its twin (not a set with its own verdict), with the
    evidence; in- and opposed-phase never pair across the injection."""
    options = StudyOptions(style=style, study_key=f"twin-{style}")
    pre = build_study(options, SMALL)
    post = build_study(StudyOptions(style=style, study_key=f"twin-{style}",
                                    series_tag="post", description_suffix=suffix,
                                    contrast_agent=agent, series_number_start=21), SMALL)
    joined = _plan(pre + post)
    (dixon_set,) = joined.sets
    assert {ds.SeriesInstanceUID for ds in pre} >= set(dixon_set.series_uids())
    twin = joined.companions[dixon_set.key].post_contrast
    assert twin is not None
    assert set(twin.series_uids()) <= {ds.SeriesInstanceUID for ds in post}
    evidence = joined.companions[dixon_set.key].post_contrast_evidence[0]
    assert (f"Contrast/Bolus Agent '{agent}'" == evidence if agent
            else evidence == f"description says {suffix.strip().upper()}")


def test_without_any_evidence_two_acquisitions_stay_two_sets() -> None:
    """No agent, no word, no order: the node does not guess which one had contrast."""
    first = build_study(StudyOptions(style="anonymised_dual_echo", study_key="repeat"), SMALL)
    again = build_study(StudyOptions(style="anonymised_dual_echo", study_key="repeat",
                                     series_tag="again", series_number_start=21), SMALL)
    joined = _plan(first + again)
    assert len(joined.sets) == 2
    assert all(c.post_contrast is None for c in joined.companions.values())


def test_a_pre_contrast_word_vetoes_and_order_decides_without_words() -> None:
    """'pre' is not 'post' (pre-contrast contains 'contrast'); an unlabelled series acquired
    after one that shows contrast is itself after the injection."""
    pre = build_study(StudyOptions(style="siemens", study_key="order",
                                   description_suffix=" pre-contrast", series_time="100000"),
                      SMALL)
    marker = extra_series(StudyOptions(study_key="order"), "fatsat_t1", SMALL)
    for ds in marker:
        ds.SeriesDescription, ds.SeriesTime = "Sag T1 FS +C", "101000"
    post = build_study(StudyOptions(style="siemens", study_key="order", series_tag="post",
                                    series_time="102000", series_number_start=21), SMALL)
    ours = extra_series(StudyOptions(study_key="order-results"), "t2", SMALL)
    for ds in ours:  # the node's own results, forwarded back by the PACS: never companions
        ds.Manufacturer, ds.SeriesTime, ds.StudyInstanceUID = (
            "marrownode", "110000", pre[0].StudyInstanceUID)
    joined = _plan(pre + marker + post + ours)
    (dixon_set,) = joined.sets
    companions = joined.companions[dixon_set.key]
    assert companions.post_contrast is not None
    assert companions.post_contrast_evidence[0].startswith("acquired after series")
    (lone,) = [item for item in companions.left_out if item.kind == "post_contrast"]
    assert lone.description == "Sag T1 FS +C" and "no Dixon twin" in lone.reason


def _frame(**header: Any) -> Any:
    base = {"study_uid": "1", "series_uid": "2", "sop_instance_uid": "3", "modality": "MR",
            "frames": [{"position": [0, 0, 0], "orientation": [0, 1, 0, 0, 0, -1],
                        "pixel_spacing": [1, 1], "echo_time": header.pop("echo_time", None)}]}
    return frames_from_header({**base, **header})[0]


@pytest.mark.parametrize(("header", "why"), [
    ({"scanning_sequence": ["SE", "IR"], "inversion_time": 160.0, "echo_time": 56.0,
      "series_description": "t2_tirm_sag"}, "TI 160 ms (STIR"),  # Siemens
    ({"scanning_sequence": ["IR"], "inversion_time": 230.0, "echo_time": 42.0,
      "series_description": "Sag STIR 3T"}, "TI 230 ms"),  # GE at 3 T
    ({"scanning_sequence": ["IR"], "echo_time": 60.0, "series_description": "STIR SAG"},
     "description says STIR"),  # anonymised: no inversion time
    ({"scanning_sequence": ["SE"], "echo_time": 90.0, "scan_options": ["FS"],
      "series_description": "Sag T2 FS"}, "with fat saturation"),
    ({"scanning_sequence": ["SE"], "echo_time": 80.0, "series_description": "T2W_TSE SPAIR"},
     "with fat saturation"),  # Philips: the word
    ({"scanning_sequence": ["SE"], "echo_time": 80.0,
      "image_type": ["DERIVED", "PRIMARY", "W"], "series_description": "T2 mDIXON W"},
     "T2 Dixon water"),
])
def test_fat_suppressed_fluid_sensitive_series_are_recognised(header: dict[str, Any],
                                                               why: str) -> None:
    assert why in (fat_suppressed_fluid(_frame(**header)) or "")


@pytest.mark.parametrize("header", [
    {"scanning_sequence": ["SE"], "echo_time": 100.0, "series_description": "Sag T2 TSE"},
    {"scanning_sequence": ["GR"], "echo_time": 4.2, "scan_options": ["FS"],
     "series_description": "Sag T1 FS"},  # fat-saturated but T1: not fluid-sensitive
    {"scanning_sequence": ["IR"], "inversion_time": 2500.0, "echo_time": 100.0,
     "series_description": "Sag T2 FLAIR"},  # a long TI nulls fluid, not fat
])
def test_other_series_are_not_fat_suppressed_fluid_sensitive(header: dict[str, Any]) -> None:
    assert fat_suppressed_fluid(_frame(**header)) is None


def _report(dixon_set: dict[str, Any]) -> Any:
    """The set's report record back from its report.json entry (what the summary reads)."""
    from marrownode.report import FocusReport, SetReport, VertebraReport

    report = SetReport.__new__(SetReport)
    report.pattern = Pattern(dixon_set["pattern"])
    report.companions = dixon_set["companions"]
    report.foci = [FocusReport(**f) for f in dixon_set["foci"]]
    report.vertebrae = [VertebraReport(**v) for v in dixon_set["vertebrae"]]
    return report


def _process(tmp: Path, variant: str, **stir: Any) -> tuple[dict[str, Any], Path]:
    options = StudyOptions(style="siemens", snr=60, study_key=f"companions-{variant}",
                           series_time="120000")
    phantom = lumbar_phantom(variant)
    datasets = (build_study(options, phantom) + post_contrast_twin(options, phantom)
                + stir_series(options, variant, **stir))
    write_datasets(datasets, tmp / "in")
    report = process_paths([tmp / "in"], tmp / "out", load_settings(None))
    (study,) = report["studies"]
    return dict(study), tmp / "out"


@pytest.fixture(scope="module")
def metastasis(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    return _process(tmp_path_factory.mktemp("metastasis"), "metastasis_centre")


@pytest.fixture(scope="module")
def haemangioma(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    return _process(tmp_path_factory.mktemp("haemangioma"), "haemangioma")


def test_a_metastasis_enhances_and_is_bright_after_fat_saturation(metastasis) -> None:
    """L1's metastasis: enhancement and STIR ratio within a few points of the phantom's truth,
    normal marrow at its own truth, both flags; the twin and the STIR are not skipped
    series, and the post-contrast twin is no set of its own."""
    study, _ = metastasis
    (dixon_set,) = study["dixon_sets"]
    assert study["skipped_series"] == []
    companions = dixon_set["companions"]
    assert companions["post_contrast"]["image"] == "water"
    assert companions["post_contrast"]["series_description"].endswith("+C")
    assert "TI 160 ms" in companions["fat_suppressed"]["evidence"][0]
    assert companions["fat_suppressed"]["coverage_percent"] > 80  # another grid, resampled
    normal = companions["normal_marrow"]
    assert normal["enhancement_percent"] == pytest.approx(enhancement_truth("marrow"), abs=3)
    (focus,) = dixon_set["foci"]
    assert focus["level"] == "L1"
    assert focus["enhancement_percent"] == pytest.approx(enhancement_truth("lesion"), abs=8)
    assert focus["enhancing"] is True
    assert focus["fat_suppressed_ratio"] == pytest.approx(stir_ratio_truth("lesion"), rel=0.1)
    assert focus["high_signal_after_fat_saturation"] is True
    assert focus["fat_suppression"] is None  # not fat-containing
    assert {"enhancing_focus", "high_signal_after_fat_saturation"} <= set(dixon_set["flags"])
    for vertebra in dixon_set["vertebrae"]:
        if vertebra["level"] != "L1":
            assert vertebra["enhancement_percent"] == pytest.approx(
                enhancement_truth("marrow"), abs=3)
            assert vertebra["fat_suppressed_ratio"] == pytest.approx(1.0, abs=0.1)


def test_a_haemangioma_suppresses_completely_and_does_not_count_as_enhancing(
        haemangioma) -> None:
    study, _ = haemangioma
    (dixon_set,) = study["dixon_sets"]
    (focus,) = dixon_set["foci"]
    assert focus["category"] == "fat_containing"
    assert focus["enhancement_percent"] == pytest.approx(enhancement_truth("fat_lesion"), abs=5)
    assert focus["enhancing"] is False
    assert focus["fat_suppressed_ratio"] == pytest.approx(stir_ratio_truth("fat_lesion"),
                                                          abs=0.1)
    assert focus["fat_suppression"] == "complete"
    assert not {"enhancing_focus", "high_signal_after_fat_saturation"} & set(dixon_set["flags"])
    assert dixon_set["opposed_phase"]["series_description"] == "t1_vibe_dixon_sag_opp"


def test_a_haemangioma_is_not_called_worrying_on_the_summary_page(haemangioma,
                                                                   metastasis) -> None:
    """Its little signal loss is its fat's own: the page's words for a set whose only focus
    contains fat say so instead of "worrying for a marrow lesion", and its sharp margin (the
    typical haemangioma's) is named apart from the worrisome feature. A metastasis keeps both."""
    study, _ = haemangioma
    (dixon_set,) = study["dixon_sets"]
    (focus,) = dixon_set["foci"]
    assert focus["margin"] == "sharp" and focus["category"] == "fat_containing"
    report = _report(dixon_set)
    assert report.pattern == Pattern.FOCAL  # the pattern itself (report.json, SR) is kept
    meaning = pattern_meaning(report)
    assert "fat-containing focus" in meaning and "worrying for" not in meaning
    assert sharp_margin_finding(report) == "no (fat-containing, not counted: L2)"

    study, _ = metastasis
    (dixon_set,) = study["dixon_sets"]
    report = _report(dixon_set)
    assert pattern_meaning(report) == PATTERN_MEANINGS[Pattern.FOCAL]
    assert sharp_margin_finding(report) == "yes: L1"


def test_the_sr_reports_each_number_with_its_source_series(metastasis) -> None:
    """The focus's enhancement and STIR ratio are NUM items that reference an image of the
    post-contrast and of the STIR series; the SR's evidence lists both; dciodvfy: 0 errors."""
    study, out = metastasis
    (dixon_set,) = study["dixon_sets"]
    (sr_entry,) = [o for o in dixon_set["outputs"] if o["kind"] == "sr"]
    sr = dcmread(out / sr_entry["path"])
    companions = dixon_set["companions"]
    series_of = {ds.SOPInstanceUID: ds.SeriesInstanceUID
                 for ds in map(dcmread, (out.parent / "in").glob("*.dcm"))}

    def items(node: Dataset) -> list[Dataset]:
        found = []
        for item in node.get("ContentSequence", []):
            found.append(item)
            found += items(item)
        return found

    named = {}
    for item in items(sr):
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue in (
                "MN301", "MN303"):
            (image,) = [child for child in item.ContentSequence if child.ValueType == "IMAGE"]
            reference = image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            named.setdefault(item.ConceptNameCodeSequence[0].CodeValue, set()).add(
                series_of[reference])
    assert named == {"MN301": {companions["post_contrast"]["series_instance_uid"]},
                     "MN303": {companions["fat_suppressed"]["series_instance_uid"]}}
    evidence = {series.SeriesInstanceUID
                for study_item in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study_item.ReferencedSeriesSequence}
    assert {companions["post_contrast"]["series_instance_uid"],
            companions["fat_suppressed"]["series_instance_uid"]} <= evidence
    checked = subprocess.run(["/usr/bin/dciodvfy", str(out / sr_entry["path"])],
                             capture_output=True, text=True, timeout=120)
    assert not [line for line in (checked.stdout + checked.stderr).splitlines()
                if line.startswith("Error")]


def test_a_fat_suppressed_series_on_another_frame_of_reference_is_refused(tmp_path) -> None:
    """Patient coordinates of another frame of reference cannot be matched: left out with
    that reason, and the summary's checklist says so."""
    study, _ = _process(tmp_path, "metastasis_centre",
                        frame_of_reference_uid="1.2.826.0.1.3680043.10.1.999")
    (dixon_set,) = study["dixon_sets"]
    companions = dixon_set["companions"]
    assert companions["fat_suppressed"] is None
    (refused,) = [item for item in companions["left_out"] if item["kind"] == "fat_suppressed"]
    assert "frame of reference differs" in refused["reason"]
    assert all(f["fat_suppressed_ratio"] is None for f in dixon_set["foci"])
    assert "high_signal_after_fat_saturation" not in dixon_set["flags"]
    report = _report(dixon_set)
    assert fat_saturation_finding(report).startswith("not assessed:")
    assert "frame of reference" in fat_saturation_finding(report)


def test_the_checklist_names_the_enhancing_focus_and_normal_marrow(metastasis) -> None:
    study, _ = metastasis
    (dixon_set,) = study["dixon_sets"]
    report = _report(dixon_set)
    text = enhancement_finding(report)
    assert text.startswith("yes: L1 focus +") and "normal marrow +25 %" in text
    assert fat_saturation_finding(report).startswith("yes: L1 focus")


def test_every_output_of_a_study_with_companions_is_valid(metastasis) -> None:
    """dciodvfy: 0 errors on one object of every kind written for the set."""
    study, out = metastasis
    (dixon_set,) = study["dixon_sets"]
    firsts = {}
    for entry in dixon_set["outputs"]:
        firsts.setdefault(entry["kind"], entry["path"])
    assert set(firsts) >= {"summary", "parametric_map", "derived_mr", "overlay",
                           "segmentation", "sr"}
    for kind, path in firsts.items():
        checked = subprocess.run(["/usr/bin/dciodvfy", str(out / path)], capture_output=True,
                                 text=True, timeout=120)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines()
                  if line.startswith("Error")]
        assert not errors, (kind, errors)


def test_a_series_that_misses_the_marrow_is_left_out_with_its_coverage(tmp_path) -> None:
    """A STIR slab 60 mm to the side of the Dixon slab (same frame of reference) covers none of
    the localised marrow: left out with its coverage, nothing measured on it."""
    study, _ = _process(tmp_path, "metastasis_centre", shift_mm=60.0)
    (dixon_set,) = study["dixon_sets"]
    companions = dixon_set["companions"]
    assert companions["fat_suppressed"] is None
    (refused,) = [item for item in companions["left_out"] if item["kind"] == "fat_suppressed"]
    assert "covers 0 % of the localised marrow" in refused["reason"]
    assert companions["post_contrast"] is not None  # the twin still measured


def test_an_axial_series_lands_on_a_sagittal_grid_by_patient_coordinates() -> None:
    """Resampling reads every Dixon voxel where it lies in the patient: a field that is the
    patient's own coordinates comes back as the Dixon voxels' coordinates, across orientations,
    spacings and an offset; outside the other slab it is NaN, never extrapolated."""
    import numpy as np

    from marrownode.quant.geometry import SUPERIOR_INFERIOR, VolumeGeometry
    from marrownode.quant.resample import resample_onto

    axial = VolumeGeometry((-60.0, -60.0, -30.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0),
                           (1.0, 0.0, 0.0), (5.0, 1.2, 1.2))
    sagittal = VolumeGeometry((-8.0, -40.0, 25.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0),
                              (0.0, 1.0, 0.0), (4.0, 0.75, 0.75))
    axial_shape, sagittal_shape = (13, 100, 100), (5, 120, 100)

    def coordinate(geometry: VolumeGeometry, axis: int, shape: tuple[int, int, int],
                   ) -> np.ndarray:  # a whole volume of it (patient_coordinate broadcasts)
        return np.broadcast_to(geometry.patient_coordinate(axis, shape), shape)

    for axis in range(3):
        field = coordinate(axial, axis, axial_shape)
        on_sagittal = resample_onto(field, axial, sagittal, sagittal_shape)
        truth = coordinate(sagittal, axis, sagittal_shape)
        inside = np.isfinite(on_sagittal)
        assert 0.3 < inside.mean() < 1.0  # the axial slab covers part of the sagittal one
        assert np.abs(on_sagittal[inside] - truth[inside]).max() < 1e-3
    z = coordinate(sagittal, SUPERIOR_INFERIOR, sagittal_shape)
    assert not np.isfinite(resample_onto(coordinate(axial, 0, axial_shape), axial,
                                         sagittal, sagittal_shape)[z > 30.0 + 1e-3]).any()


def test_an_enhanced_mr_stir_is_recognised_from_its_mr_modifier_group() -> None:
    """Enhanced MR states inversion recovery and its inversion time in the MR Modifier
    functional group (not in the classic attributes): a STIR is a STIR there too, without a
    word in its description."""
    from marrownode.synthetic.enhanced import enhanced_mr

    def modified(recovery: str) -> Any:
        dataset = enhanced_mr(StudyOptions(style="philips_enhanced", study_key="enh-stir"),
                              SMALL)
        dataset.SeriesDescription = dataset.ProtocolName = "Sag T2 enhanced"
        modifier = Dataset()
        modifier.InversionRecovery = recovery
        if recovery == "YES":
            modifier.InversionTimes = [170.0]
        dataset.SharedFunctionalGroupsSequence[0].MRModifierSequence = [modifier]
        return frames_from_header(summarise(dataset))[0]

    assert "TI 170 ms (STIR" in (fat_suppressed_fluid(modified("YES")) or "")
    assert fat_suppressed_fluid(modified("NO")) is None
