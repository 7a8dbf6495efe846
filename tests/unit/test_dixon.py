"""dixon/: roles, sets, volumes and `marrownode process` across vendor labelling conventions."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from marrownode.config import Settings
from marrownode.dixon.header import summarise
from marrownode.dixon.roles import Role, classify, frames_from_header, phase_of_echo
from marrownode.dixon.sets import assemble
from marrownode.pipeline import process_paths
from marrownode.report import SetReport
from marrownode.synthetic.anatomy import tissue_truth
from marrownode.synthetic.studies import (
    STYLES,
    StudyOptions,
    build_study,
    compress,
    echo_times_ms,
    extra_series,
    write_datasets,
)


def assembly_of(datasets):
    frames = [f for ds in datasets for f in frames_from_header(summarise(ds))]
    return assemble(classify(frames))


def series_with(datasets, description_or_role: str) -> str:
    for ds in datasets:
        if ds.SeriesDescription == description_or_role:
            return ds.SeriesInstanceUID
    raise KeyError(description_or_role)


EXPECTED_LABELS = {
    # style: (in-phase series description, opposed, water, fat)
    "siemens": ("t1_vibe_dixon_sag_in", "t1_vibe_dixon_sag_opp", "t1_vibe_dixon_sag_W",
                "t1_vibe_dixon_sag_F"),
    "siemens_xa": ("t1_vibe_dixon_in_1", "t1_vibe_dixon_opp_1", "t1_vibe_dixon_W_1",
                   "t1_vibe_dixon_F_1"),
    "ge_lava": ("InPhase: Sag LAVA-Flex", "OutPhase: Sag LAVA-Flex", "WATER: Sag LAVA-Flex",
                "FAT: Sag LAVA-Flex"),
    "ge_idealiq": ("InPhase: Sag LAVA-Flex", "OutPhase: Sag LAVA-Flex", "WATER: Sag LAVA-Flex",
                   "FAT: Sag LAVA-Flex"),
    "philips_mdixon": ("sT1W_mDIXON_SAG",) * 4,
    "philips_enhanced": ("mDIXON enhanced",) * 4,
}


@pytest.mark.parametrize("style", [s for s in STYLES if s in EXPECTED_LABELS])
def test_each_vendor_style_gives_exactly_one_complete_set(style: str) -> None:
    options = StudyOptions(style=style)
    datasets = build_study(options)
    assembly = assembly_of(datasets)
    assert len(assembly.sets) == 1
    summary = SetReport.of(assembly.sets[0]).to_json()
    op_te, ip_te = echo_times_ms(1.5)
    ip, op, water, fat = (series_with(datasets, d) for d in EXPECTED_LABELS[style])
    assert summary["in_phase"]["series_instance_uid"] == ip
    assert summary["opposed_phase"]["series_instance_uid"] == op
    assert summary["water"]["series_instance_uid"] == water
    assert summary["fat"]["series_instance_uid"] == fat
    assert summary["in_phase"]["echo_time_ms"] == pytest.approx(ip_te)
    assert summary["opposed_phase"]["echo_time_ms"] == pytest.approx(op_te)
    assert summary["field_strength_t"] == 1.5
    assert summary["flags"] == []
    assert summary["in_phase"]["images"] == 12
    if style == "ge_idealiq":
        ff = series_with(datasets, "FatFrac: Sag IDEAL IQ")
        assert summary["scanner_fat_fraction"]["series_instance_uid"] == ff
    else:
        assert summary["scanner_fat_fraction"] is None
    assert assembly.skipped_series == []


def test_enhanced_mr_dual_echo_with_phase_frames_is_paired_by_echo_time() -> None:
    """An Ingenia-style Enhanced MR FFE: EchoPulseSequence GRADIENT (the Enhanced MR value
    set), orientation per frame, magnitude and phase frames of both echoes in one object, no
    Dixon labels. The magnitude frames pair by echo time; the phase frames are not images of
    signal and are left out with that reason."""
    (dataset,) = build_study(StudyOptions(style="philips_enhanced_ffe"))
    assert "PlaneOrientationSequence" not in dataset.SharedFunctionalGroupsSequence[0]
    assembly = assembly_of([dataset])
    assert len(assembly.sets) == 1 and assembly.skipped_series == []
    summary = SetReport.of(assembly.sets[0]).to_json()
    op_te, ip_te = echo_times_ms(1.5)
    assert summary["in_phase"]["series_instance_uid"] == dataset.SeriesInstanceUID
    assert summary["in_phase"]["echo_time_ms"] == pytest.approx(ip_te)
    assert summary["opposed_phase"]["echo_time_ms"] == pytest.approx(op_te)
    assert summary["in_phase"]["images"] == 12 and summary["opposed_phase"]["images"] == 12
    assert summary["water"] is None and summary["fat"] is None
    frames = frames_from_header(summarise(dataset))
    classified = classify(frames)
    phase = [c for c in classified if c.frame.complex_component == "PHASE"]
    assert len(phase) == 24 and all(c.role is Role.NONE and "phase image" in c.reason
                                    for c in phase)
    magnitude = [c for c in classified if c.frame.complex_component == "MAGNITUDE"]
    assert {c.role for c in magnitude} == {Role.IN_PHASE, Role.OPPOSED_PHASE}


def test_enhanced_mr_with_orientation_per_frame_gets_valid_results(tmp_path: Path) -> None:
    """highdicom wants a multi-frame source's orientation in the shared groups: results of a
    source that states it per frame are built all the same, and are valid."""
    import subprocess

    write_datasets(build_study(StudyOptions(style="philips_enhanced_ffe", study_key="ffe")),
                   tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    (dixon_set,) = report["studies"][0]["dixon_sets"]
    kinds = {entry["kind"]: entry for entry in dixon_set["outputs"]}
    assert set(kinds) == {"summary", "parametric_map", "derived_mr", "overlay", "sr",
                         "segmentation"}
    for kind in ("summary", "parametric_map", "segmentation", "sr"):
        checked = subprocess.run(["/usr/bin/dciodvfy", str(tmp_path / "out" / kinds[kind]["path"])],
                                 capture_output=True, text=True, timeout=120)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], f"{kind}: {errors}"


def test_evidence_order_tokens_private_naming() -> None:
    datasets = build_study(StudyOptions(style="philips_mdixon"))
    for ds in datasets:
        ds.ImageType = ["DERIVED", "PRIMARY", "M"]  # tokens gone: private tag decides
    frames = [f for ds in datasets for f in frames_from_header(summarise(ds))]
    evidence = {c.evidence for c in classify(frames)}
    assert evidence == {"private"}
    for ds in datasets:
        del ds[0x2005, 0x0010]
        del ds[0x2005, 0x1011]  # anonymised: nothing but the description would be left
    assembly = assembly_of(datasets)
    assert assembly.sets == []  # one description for four contrasts cannot say which is which
    ge = build_study(StudyOptions(style="ge_lava"))
    for ds in ge:
        ds.ImageType = ["DERIVED", "PRIMARY"]
    assert {c.evidence for c in classify(
        [f for ds in ge for f in frames_from_header(summarise(ds))])} == {"naming"}
    assert len(assembly_of(ge).sets) == 1


def test_anonymised_dual_echo_pairs_by_echo_time_physics() -> None:
    datasets = build_study(StudyOptions(style="anonymised_dual_echo"))
    assert all(not ds.get("Manufacturer") and not ds.SeriesDescription for ds in datasets)
    (dixon_set,) = assembly_of(datasets).sets
    summary = SetReport.of(dixon_set).to_json()
    series = datasets[0].SeriesInstanceUID
    assert summary["in_phase"]["series_instance_uid"] == series
    assert summary["opposed_phase"]["series_instance_uid"] == series
    assert summary["in_phase"]["echo_time_ms"] != summary["opposed_phase"]["echo_time_ms"]
    assert summary["flags"] == ["roles_from_echo_time"]
    assert summary["water"] is None


def test_in_phase_first_at_3t_is_flagged() -> None:
    datasets = build_study(StudyOptions(style="anonymised_dual_echo", field_strength_t=3.0,
                                        in_phase_first=True))
    (dixon_set,) = assembly_of(datasets).sets
    assert SetReport.of(dixon_set).to_json()["field_strength_t"] == 3.0
    assert "in_phase_first" in dixon_set.flags
    assert dixon_set.in_phase.echo_time == pytest.approx(echo_times_ms(3.0, True)[1])


@pytest.mark.parametrize(
    ("te", "field", "role"),
    [(2.3, 1.5, Role.OPPOSED_PHASE), (4.6, 1.5, Role.IN_PHASE), (6.9, 1.5, Role.OPPOSED_PHASE),
     (1.15, 3.0, Role.OPPOSED_PHASE), (2.3, 3.0, Role.IN_PHASE), (3.45, 3.0, Role.OPPOSED_PHASE),
     (3.45, 1.5, Role.NONE), (4.2, 3.0, Role.NONE)],
)
def test_echo_time_physics(te, field, role) -> None:
    assert phase_of_echo(te, field)[0] is role


def test_non_dixon_series_are_skipped_with_reasons() -> None:
    options = StudyOptions(style="siemens")
    fatsat = extra_series(options, "fatsat_t1")
    stir = extra_series(options, "stir")
    t2 = extra_series(options, "t2")
    assembly = assembly_of(build_study(options) + fatsat + stir + t2)
    assert len(assembly.sets) == 1
    reasons = {s["series_instance_uid"]: s["reason"] for s in assembly.skipped_series}
    assert reasons[fatsat[0].SeriesInstanceUID].startswith("fat-suppressed (ScanOptions FS)")
    assert "STIR" in reasons[stir[0].SeriesInstanceUID]
    assert reasons[t2[0].SeriesInstanceUID] == "not gradient echo (ScanningSequence SE)"
    # The fat-sat T1 at TE 4.2 ms would look in-phase at 1.5 T: only the FS gate stops it.
    assert phase_of_echo(4.2, 1.5)[0] is Role.IN_PHASE


def test_fat_sat_detected_from_description_alone() -> None:
    series = extra_series(StudyOptions(), "fatsat_t1")
    twin = copy.deepcopy(series)
    for ds in series + twin:
        ds.ScanOptions = ""
    for ds in twin:  # a second echo on the same geometry, so only the FS gate can refuse it
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
        ds.EchoTime = 2.3
    assembly = assembly_of(series + twin)
    assert assembly.sets == []
    assert len(assembly.skipped_series) == 2
    assert all("description says FS" in s["reason"] for s in assembly.skipped_series)


def test_two_sets_in_one_study_sagittal_and_axial() -> None:
    sagittal = build_study(StudyOptions(style="siemens", study_key="two"))
    axial = build_study(StudyOptions(style="ge_lava", study_key="two", orientation="axial",
                                     series_number_start=10))
    assert sagittal[0].StudyInstanceUID == axial[0].StudyInstanceUID
    assembly = assembly_of(sagittal + axial)
    assert [s.in_phase.label for s in assembly.sets] == ["axial", "sagittal"]
    assert len({s.key for s in assembly.sets}) == 2


def test_never_pairs_across_geometry() -> None:
    datasets = build_study(StudyOptions(style="siemens"))
    opposed = [ds for ds in datasets if ds.SeriesDescription.endswith("_opp")]
    for ds in opposed:
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0] + 2.0, *ds.ImagePositionPatient[1:]]
    assembly = assembly_of(datasets)
    assert assembly.sets == []
    reasons = {s["series_instance_uid"]: s["reason"] for s in assembly.skipped_series}
    assert "slice positions differ" in reasons[opposed[0].SeriesInstanceUID]
    missing = [ds for ds in build_study(StudyOptions(style="siemens"))
               if not ds.SeriesDescription.endswith("_opp") or ds.InstanceNumber > 2]
    reasons = {s["series_instance_uid"]: s["reason"] for s in assembly_of(missing).skipped_series}
    assert "slice count differs (10 vs 12)" in reasons[opposed[0].SeriesInstanceUID]


def test_scanner_fat_fraction_map_is_not_an_echo() -> None:
    datasets = [ds for ds in build_study(StudyOptions(style="ge_idealiq"))
                if ds.SeriesDescription.startswith("FatFrac")]
    frames = [f for ds in datasets for f in frames_from_header(summarise(ds))]
    assert {c.role for c in classify(frames)} == {Role.FAT_FRACTION}
    (skip,) = assemble(classify(frames)).skipped_series
    assert skip["reason"].startswith("scanner fat-fraction map (recognised, not an echo)")


def test_enhanced_mr_frames_are_split_by_role() -> None:
    (dataset,) = build_study(StudyOptions(style="philips_enhanced"))
    frames = frames_from_header(summarise(dataset))
    assert len(frames) == 48 and frames[5].frame_index == 5
    roles = [c.role for c in classify(frames)]
    assert roles.count(Role.IN_PHASE) == roles.count(Role.WATER) == 12


def test_marrownode_results_are_not_reanalysed() -> None:
    datasets = build_study(StudyOptions(style="siemens"))
    for ds in datasets:
        ds.Manufacturer = "marrownode"
    assembly = assembly_of(datasets)
    assert assembly.sets == []
    assert len(assembly.skipped_series) == 4
    assert all("marrownode result" in s["reason"] for s in assembly.skipped_series)


def test_process_cli_report_shape_compressed_and_utf8(tmp_path: Path) -> None:
    options = StudyOptions(style="siemens", patient_name="Müller^Jörg=ミュラー", study_key="cli")
    datasets = build_study(options)
    encoded = (compress(datasets[:12], RLELossless) + compress(datasets[12:24], JPEG2000Lossless)
               + compress(datasets[24:36], JPEGLSLossless) + datasets[36:])
    write_datasets(encoded, tmp_path / "in" / "nested" / "deeper")
    write_datasets(extra_series(options, "t2"), tmp_path / "in" / "t2")
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    two = build_study(StudyOptions(style="anonymised_dual_echo", study_key="other",
                                   field_strength_t=3.0, in_phase_first=True))
    write_datasets(two, tmp_path / "other")
    result = subprocess.run(
        [sys.executable, "-m", "marrownode", "process", str(tmp_path / "in"),
         str(tmp_path / "other"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    by_uid = {s["study_instance_uid"]: s for s in report["studies"]}
    study = by_uid[datasets[0].StudyInstanceUID]
    (dixon_set,) = study["dixon_sets"]
    for key in ("in_phase", "opposed_phase", "water", "fat", "field_strength_t",
                "signal_loss_threshold_percent", "flags", "marrow", "pattern", "vertebrae",
                "foci", "outputs"):
        assert key in dixon_set
    assert "tissue" not in dixon_set  # no whole-tissue numbers anywhere
    assert dixon_set["signal_loss_threshold_percent"] == 20.0
    assert dixon_set["marrow"] == {
        "localised": True, "method": "image", "reason": "5 vertebral bodies in one column",
        "levels_reason": "no sacrum in view (no fused segments at the caudal end): the levels "
                         "cannot be counted from it"}
    # the block phantom has no sacrum: V-numbers only, and the flag says why no name
    assert "levels_uncertain" in dixon_set["flags"]
    assert all(v["level"] is None for v in dixon_set["vertebrae"])
    assert dixon_set["pattern"] == "focal"
    assert [v["label"] for v in dixon_set["vertebrae"]] == ["V1", "V2", "V3", "V4", "V5"]
    for vertebra in dixon_set["vertebrae"]:
        assert set(vertebra) >= {"centroid_patient_mm", "signal_loss_percent_median",
                                 "sir_median", "fat_fraction_percent_median",
                                 "fraction_below_threshold", "pattern",
                                 "in_phase_to_muscle_ratio", "in_phase_to_disc_ratio",
                                 "tracking_uid"}
    (focus,) = dixon_set["foci"]
    assert focus["signal_loss_percent"] == pytest.approx(
        tissue_truth("lesion")["signal_loss_percent"], abs=0.1)
    assert focus["below_threshold"] is True and focus["category"] == "low_signal_loss"
    assert focus["vertebra"] == "V3" and len(focus["centroid_patient_mm"]) == 3
    assert study["skipped_series"][0]["reason"] == "not gradient echo (ScanningSequence SE)"
    assert report["unreadable_files"][0]["path"].endswith("notes.txt")
    other = by_uid[two[0].StudyInstanceUID]["dixon_sets"][0]
    assert other["in_phase"]["series_instance_uid"] == other["opposed_phase"][
        "series_instance_uid"]
    assert other["field_strength_t"] == 3.0 and other["signal_loss_threshold_percent"] == 25.0
    assert {"in_phase_first", "roles_from_echo_time",
            "fat_fraction_ambiguous_above_50"} <= set(other["flags"])


def test_missing_input_path_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "marrownode", "process", str(tmp_path / "nope"),
         "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "nope" in result.stderr


def test_volumes_decode_every_transfer_syntax_identically(tmp_path: Path) -> None:
    datasets = build_study(StudyOptions(style="philips_enhanced", snr=20))
    plain = process_paths([write_datasets(datasets, tmp_path / "a")[0]], tmp_path / "o1",
                          Settings())
    rle = process_paths([write_datasets(compress(datasets, RLELossless), tmp_path / "b")[0]],
                        tmp_path / "o2", Settings())
    first = plain["studies"][0]["dixon_sets"][0]
    second = rle["studies"][0]["dixon_sets"][0]
    assert first["foci"] == second["foci"] and first["vertebrae"] == second["vertebrae"]
    assert np.isclose(first["foci"][0]["sir"], tissue_truth("lesion")["sir"], atol=0.02)


def _read_back(dataset, tmp_path: Path, name: str):
    """The dataset as the pipeline meets it: written as a file and read with dcmread."""
    from pydicom import dcmread

    path = tmp_path / f"{name}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return dcmread(path)


def test_stored_values_are_pydicoms_for_every_style_and_bit_layout(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """The pixel read that skips pydicom's decoder framework for uncompressed monochrome data
    gives exactly pydicom's pixel_array: every vendor style (Enhanced multi-frame included),
    12 of 16 bits stored with garbage in the unused high bits (unsigned and signed), 8-bit
    data with its pad byte, MONOCHROME1; a compressed file still goes through pydicom."""
    from marrownode.dixon.volume import stored_values
    from marrownode.synthetic.phantom import spine_phantom

    phantom = spine_phantom(slices=4, rows=32, cols=24)
    cases = []
    for style in STYLES:
        cases += [(f"{style}-{i}", d) for i, d in enumerate(
            build_study(StudyOptions(style=style, study_key=f"values-{style}"), phantom)[:2])]
    base = cases[0][1]
    rng = np.random.default_rng(5)
    for name, signed in (("garbage-unsigned", 0), ("garbage-signed", 1)):
        crafted = copy.deepcopy(base)
        raw = rng.integers(0, 1 << 16, size=(crafted.Rows, crafted.Columns), dtype=np.uint16)
        crafted.BitsStored, crafted.HighBit, crafted.PixelRepresentation = 12, 11, signed
        crafted.PixelData = raw.tobytes()
        cases.append((name, crafted))
    for name, photometric in (("eight-bit", "MONOCHROME2"), ("eight-bit-inverted", "MONOCHROME1")):
        crafted = copy.deepcopy(base)
        crafted.Rows, crafted.Columns = 5, 7  # 35 bytes: written with a pad byte
        crafted.BitsAllocated = crafted.BitsStored = 8
        crafted.HighBit, crafted.PixelRepresentation = 7, 0
        crafted.PhotometricInterpretation = photometric
        crafted.PixelData = rng.integers(0, 256, size=35, dtype=np.uint8).tobytes()
        cases.append((name, crafted))
    cases.append(("rle", compress([copy.deepcopy(base)], RLELossless)[0]))
    from pydicom.dataset import Dataset

    decoded = Dataset.pixel_array

    def refused(self):  # the read of uncompressed data must not need pydicom's decoders
        raise AssertionError("pixel_array used")

    for name, dataset in cases:
        read = _read_back(dataset, tmp_path, name)
        expected = _read_back(dataset, tmp_path, f"{name}-again").pixel_array
        monkeypatch.setattr(Dataset, "pixel_array", decoded if name == "rle"
                            else property(refused))
        got = stored_values(read)
        monkeypatch.setattr(Dataset, "pixel_array", decoded)
        assert got.shape == expected.shape, name
        assert got.dtype == expected.dtype, name
        assert np.array_equal(got, expected), name
    assert any(name.startswith("philips_enhanced") for name, _ in cases)
