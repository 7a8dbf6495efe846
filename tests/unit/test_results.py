"""results/: every output kind valid per dciodvfy, values round-trip to the phantom truth,
patient/study copied exactly, series distinct, and identical bytes on a re-run."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from scipy import ndimage

from marrownode.config import settings_from_mapping
from marrownode.pipeline import process_paths
from marrownode.results.derived_mr import PIXEL_PADDING_VALUE
from marrownode.results.overlay import LEGEND_HEIGHT
from marrownode.synthetic.anatomy import (
    ANATOMY_CODES,
    DEFAULT_GRIDS,
    anatomical_phantom,
    tissue_truth,
)
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets
from tests.conftest import require_binary

NAME = "Müller^Jörg=ミュラー^ヨルグ"
EXPECTED_COUNTS = {"summary": 1, "parametric_map": 2, "derived_mr": 24, "overlay": 12, "sr": 1,
                   "segmentation": 1}


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> dict:
    """Two studies (classic single-frame Siemens, Philips Enhanced MR) processed once."""
    base = tmp_path_factory.mktemp("results")
    shape, pixel_spacing, thickness = DEFAULT_GRIDS["sagittal"]
    phantom = anatomical_phantom("infiltrative_focus", "sagittal", shape=shape,
                                 pixel_spacing_mm=pixel_spacing, slice_thickness_mm=thickness,
                                 supersample=1)  # no partial volume: exact truth per voxel
    studies = {
        "siemens": build_study(StudyOptions(style="siemens", patient_name=NAME,
                                            study_key="res-siemens"), phantom),
        "enhanced": build_study(StudyOptions(style="philips_enhanced", patient_name=NAME,
                                             study_key="res-enhanced"), phantom),
    }
    for key, datasets in studies.items():
        write_datasets(datasets, base / "in" / key)
    report = process_paths([base / "in"], base / "out", settings_from_mapping({}))
    return {"base": base, "phantom": phantom, "studies": studies, "report": report}


def outputs_of(processed, key: str) -> tuple[dict, list[dict]]:
    study_uid = processed["studies"][key][0].StudyInstanceUID
    (study,) = [s for s in processed["report"]["studies"] if s["study_instance_uid"] == study_uid]
    (dixon_set,) = study["dixon_sets"]
    return dixon_set, dixon_set["outputs"]


def load(processed, entry: dict):
    return dcmread(processed["base"] / "out" / entry["path"])


@pytest.mark.parametrize("key", ["siemens", "enhanced"])
def test_every_kind_is_written_listed_and_valid(processed, key: str) -> None:
    dciodvfy = require_binary("/usr/bin/dciodvfy")
    _, outputs = outputs_of(processed, key)
    counts: dict[str, int] = {}
    for entry in outputs:
        counts[entry["kind"]] = counts.get(entry["kind"], 0) + 1
    assert counts == EXPECTED_COUNTS
    # The first instance of a series is built in full, the others from it: validate both ends.
    ends: dict[tuple[str, str], dict] = {}
    for entry in outputs:
        ends.setdefault((entry["kind"], "first"), entry)
        ends[(entry["kind"], "last")] = entry
    for (kind, _), entry in ends.items():
        path = processed["base"] / "out" / entry["path"]
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True,
                                timeout=120)
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], f"{kind}: {errors}"
    # Every file has its own identity, consistent between meta, data set and report.
    numbers: dict[str, set[int]] = {}
    for entry in outputs:
        dataset = dcmread(processed["base"] / "out" / entry["path"], stop_before_pixels=True)
        assert dataset.SOPInstanceUID == entry["sop_instance_uid"]
        assert dataset.file_meta.MediaStorageSOPInstanceUID == entry["sop_instance_uid"]
        numbers.setdefault(entry["series_instance_uid"], set()).add(int(dataset.InstanceNumber))
    assert len({e["sop_instance_uid"] for e in outputs}) == len(outputs)
    for series_uid, instance_numbers in numbers.items():
        count = sum(1 for e in outputs if e["series_instance_uid"] == series_uid)
        assert instance_numbers == set(range(1, count + 1)), series_uid


@pytest.mark.parametrize("key", ["siemens", "enhanced"])
def test_patient_study_copied_exactly_new_distinct_series(processed, key: str) -> None:
    source = processed["studies"][key][0]
    _, outputs = outputs_of(processed, key)
    numbers: dict[str, int] = {}
    for entry in outputs:
        ds = load(processed, entry)
        assert ds.SpecificCharacterSet == source.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == NAME
        for keyword in ("PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
                        "StudyDate", "StudyID"):
            assert ds.get(keyword) == source.get(keyword), keyword
        assert ds.Manufacturer == "marrownode" and ds.SoftwareVersions
        if entry["kind"] != "sr":
            assert ds.BodyPartExamined == source.BodyPartExamined
        assert ds.SeriesInstanceUID not in {d.SeriesInstanceUID for d in processed["studies"][key]}
        numbers.setdefault(ds.SeriesInstanceUID, ds.SeriesNumber)
        assert "%" in ds.SeriesDescription or entry["kind"] in ("summary", "overlay", "sr",
                                                                   "segmentation")
    assert len(set(numbers.values())) == len(numbers) == 8


def test_parametric_map_round_trips_truth(processed) -> None:
    _, outputs = outputs_of(processed, "siemens")
    phantom = processed["phantom"]
    loss_entry = next(e for e in outputs if e["kind"] == "parametric_map"
                      and "signal loss" in e["series_description"])
    pm = hd.pm.ParametricMap.from_dataset(load(processed, loss_entry))
    # Frames are ordered by the PM's dimension index; place them by their plane position.
    source_slice = {tuple(round(float(v), 3) for v in d.ImagePositionPatient): d.InstanceNumber - 1
                    for d in processed["studies"]["siemens"] if d.SeriesDescription.endswith("_in")}
    order = [source_slice[tuple(round(float(v), 3)
                                for v in f.PlanePositionSequence[0].ImagePositionPatient)]
             for f in pm.PerFrameFunctionalGroupsSequence]
    values = np.empty_like(pm.pixel_array)
    values[order] = pm.pixel_array
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert values.dtype == np.float32 and values.shape == phantom.labels.shape
    for tissue in ("marrow", "lesion", "muscle", "disc"):
        region = phantom.labels == ANATOMY_CODES[tissue]
        assert np.allclose(values[region], tissue_truth(tissue)["signal_loss_percent"],
                           atol=0.01)
    assert np.isnan(values[phantom.labels == ANATOMY_CODES["background"]]).all()
    refs = pm.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    in_phase = {d.SOPInstanceUID for d in processed["studies"]["siemens"]
                if d.SeriesDescription.endswith("_in")}
    assert {r.ReferencedSOPInstanceUID for r in refs} == in_phase


def test_derived_mr_is_integer_percent_on_source_geometry(processed) -> None:
    _, outputs = outputs_of(processed, "siemens")
    phantom = processed["phantom"]
    entries = [e for e in outputs if e["kind"] == "derived_mr"
               and "fat fraction" in e["series_description"]]
    slices = sorted((load(processed, e) for e in entries), key=lambda d: d.InstanceNumber)
    sources = sorted((d for d in processed["studies"]["siemens"]
                      if d.SeriesDescription.endswith("_in")), key=lambda d: d.InstanceNumber)
    volume = np.stack([d.pixel_array for d in slices])
    for tissue in ("marrow", "lesion"):
        region = phantom.labels == ANATOMY_CODES[tissue]
        assert (volume[region] == round(tissue_truth(tissue)["fat_fraction_percent"])).all()
    # Outside the body the map is undefined: the declared padding value, not a 0 % reading.
    assert (volume[phantom.labels == ANATOMY_CODES["background"]] == PIXEL_PADDING_VALUE).all()
    assert all(int(d.PixelPaddingValue) == PIXEL_PADDING_VALUE for d in slices)
    for derived, source in zip(slices, sources, strict=True):
        assert list(derived.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert derived.ImagePositionPatient == source.ImagePositionPatient
        assert derived.ImageOrientationPatient == source.ImageOrientationPatient
        assert derived.get("EchoTime") in (None, "") and "EchoNumbers" not in derived
        assert "RescaleSlope" not in derived
        assert derived.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[
            0].CodeValue == "%"
        referenced = {r.ReferencedSOPInstanceUID for r in derived.SourceImageSequence}
        assert source.SOPInstanceUID in referenced


def test_sr_measurements_round_trip(processed) -> None:
    dixon_set, outputs = outputs_of(processed, "siemens")
    (entry,) = [e for e in outputs if e["kind"] == "sr"]
    sr = hd.sr.srread(processed["base"] / "out" / entry["path"])
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MARROWNODE"
    report = sr.content
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(dixon_set["foci"]) == 1
    measured = {m.name.meaning: m.value for m in groups[0].get_measurements()}
    expected = tissue_truth("lesion")
    assert measured["Chemical shift signal loss"] == pytest.approx(
        expected["signal_loss_percent"], abs=0.01)
    assert measured["Opposed-phase to in-phase signal intensity ratio"] == pytest.approx(
        expected["sir"], abs=1e-3)  # reported to three decimals, like report.json
    assert measured["Fat fraction"] == pytest.approx(expected["fat_fraction_percent"], abs=0.01)
    def scoords(item) -> int:
        own = 1 if item.get("ValueType") == "SCOORD" else 0
        return own + sum(scoords(child) for child in item.get("ContentSequence", []))

    assert scoords(sr) == dixon_set["foci"][0]["slice_count"], "one outline per focus slice"
    evaluations = {e.name.meaning: e.value.meaning
                   for e in groups[0].get_qualitative_evaluations()}
    assert evaluations["Signal loss compared with threshold"].startswith("Below threshold")
    assert evaluations["Focus category"].startswith("Low signal loss")
    assert evaluations["Focus margin"] == "Sharply marginated"
    assert groups[0].tracking_identifier == "Focus 1 in V3"
    image_groups = report.get_image_measurement_groups()
    set_group, *vertebra_groups = image_groups
    values = {m.name.meaning: m.value for m in set_group.get_measurements()}
    assert values == {"Magnetic field strength": pytest.approx(1.5),
                      "Signal loss threshold": pytest.approx(20.0)}  # no whole-tissue number
    set_evaluations = {e.value.meaning for e in set_group.get_qualitative_evaluations()}
    assert "Vertebral marrow localised from the images" in set_evaluations
    assert {"Focal"} <= set_evaluations
    # One group per localised vertebral body, with its stable tracking UID and finding site.
    assert [str(g.tracking_uid) for g in vertebra_groups] == [
        v["tracking_uid"] for v in dixon_set["vertebrae"]]
    for group, vertebra in zip(vertebra_groups, dixon_set["vertebrae"], strict=True):
        assert group.finding_sites[0].value.meaning == "Vertebral body"
        medians = {m.name.meaning: m.value for m in group.get_measurements()}
        assert medians["Chemical shift signal loss"] == pytest.approx(
            vertebra["signal_loss_percent_median"], abs=1e-3)
        assert medians["Chemical shift signal loss"] == pytest.approx(
            tissue_truth("marrow")["signal_loss_percent"], abs=1.0)
    evidence = {(ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence}
    assert "1.2.840.10008.5.1.4.1.1.4" in {c for c, _ in evidence}  # the source MR images
    # The Parametric Maps, as images: the very objects written (the SR is built beside them).
    maps = {(o["sop_class_uid"], o["sop_instance_uid"]) for o in dixon_set["outputs"]
            if o["kind"] == "parametric_map"}
    assert len(maps) == 2 and maps <= evidence


def test_segmentation_holds_the_localised_vertebrae_as_reported(processed) -> None:
    """One segment per vertebral body (and its posterior elements), labelled and tracked like
    report.json and the SR, with exactly the voxels the numbers came from; the focus lies
    inside its vertebra's segment."""
    dixon_set, outputs = outputs_of(processed, "siemens")
    (entry,) = [e for e in outputs if e["kind"] == "segmentation"]
    seg = load(processed, entry)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    bodies = {s.SegmentLabel.split()[0]: n for n, s in segments.items()
              if s.SegmentLabel.endswith("vertebral body")}
    assert list(bodies) == [v["label"] for v in dixon_set["vertebrae"]]
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    per_segment: dict[int, int] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        per_segment[number] = per_segment.get(number, 0) + int(frame.sum())
    for vertebra in dixon_set["vertebrae"]:
        number = bodies[vertebra["label"]]
        assert per_segment[number] == vertebra["voxel_count"]
        assert segments[number].TrackingUID == vertebra["tracking_uid"]
        assert segments[number].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == (
            "Vertebral body")
    (focus,) = dixon_set["foci"]
    assert focus["vertebra"] == "V3"
    v3 = bodies["V3"]
    v3_frames = [item.PlanePositionSequence[0].ImagePositionPatient
                 for item in seg.PerFrameFunctionalGroupsSequence
                 if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == v3]
    positions = [float(p[0]) for p in v3_frames]  # sagittal: slices along x
    assert min(positions) <= focus["centroid_patient_mm"][0] <= max(positions)


#: When an object was made: the only thing a re-run may change.
CREATION_KEYWORDS = ("InstanceCreationDate", "InstanceCreationTime", "SeriesDate", "SeriesTime",
                     "ContentDate", "ContentTime", "DateOfSecondaryCapture",
                     "TimeOfSecondaryCapture")


def _without_creation_times(path: Path) -> tuple[Dataset, str]:
    dataset = dcmread(path)
    made = f"{dataset.InstanceCreationDate}{dataset.InstanceCreationTime}"
    for keyword in CREATION_KEYWORDS:
        if keyword in dataset:
            del dataset[keyword]
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    return dataset, made


def test_re_running_gives_identical_uids_and_content_made_now(processed,
                                                               tmp_path: Path) -> None:
    """Same input and settings: the same UIDs (a re-send replaces) and the same content; the
    creation, series and content dates say when each run made its objects."""
    started = datetime.now().strftime("%Y%m%d%H%M%S")
    again = process_paths([processed["base"] / "in"], tmp_path / "again",
                          settings_from_mapping({}))
    first = {e["sop_instance_uid"]: e["path"] for s in processed["report"]["studies"]
             for d in s["dixon_sets"] for e in d["outputs"]}
    second = {e["sop_instance_uid"]: e["path"] for s in again["studies"]
              for d in s["dixon_sets"] for e in d["outputs"]}
    assert first == second
    for path in first.values():
        before, made_before = _without_creation_times(processed["base"] / "out" / path)
        after, made_after = _without_creation_times(tmp_path / "again" / path)
        assert before == after
        assert made_before < made_after and made_after[:14] >= started


def test_settings_that_change_content_change_every_uid(processed, tmp_path: Path) -> None:
    """Another 1.5 T threshold is other content: no output UID may be reused (the PACS would
    keep the old report silently). A setting that changes no content keeps them."""
    first = {e["kind"]: e["sop_instance_uid"] for d in processed["report"]["studies"][0][
        "dixon_sets"] for e in d["outputs"]}
    thresholds = [{"field_strength_t": 1.5, "signal_loss_percent": 10.0},
                  {"field_strength_t": 3.0, "signal_loss_percent": 25.0}]
    other = process_paths([processed["base"] / "in"], tmp_path / "other", settings_from_mapping(
        {"analysis": {"thresholds": thresholds}}))
    changed = {e["kind"]: e["sop_instance_uid"] for d in other["studies"][0]["dixon_sets"]
               for e in d["outputs"]}
    assert changed.keys() == first.keys() and not set(changed.values()) & set(first.values())
    same = process_paths([processed["base"] / "in"], tmp_path / "same", settings_from_mapping(
        {"analysis": {"time_limit_seconds": 60}}))
    assert {e["kind"]: e["sop_instance_uid"] for d in same["studies"][0]["dixon_sets"]
            for e in d["outputs"]} == first


def test_uid_root_and_output_selection_are_configurable(processed, tmp_path: Path) -> None:
    settings = settings_from_mapping({"outputs": {"uid_root": "1.2.826.0.1.3680043.10.999",
                                                  "overlay": False, "derived_mr": False,
                                                  "segmentation": False, "summary": False}})
    report = process_paths([processed["base"] / "in" / "siemens"], tmp_path / "o", settings)
    outputs = report["studies"][0]["dixon_sets"][0]["outputs"]
    assert {e["kind"] for e in outputs} == {"parametric_map", "sr"}
    assert all(e["sop_instance_uid"].startswith("1.2.826.0.1.3680043.10.999.") and
               len(e["sop_instance_uid"]) <= 64 for e in outputs)


def test_overlay_burns_in_legend_and_marks_the_focus(processed) -> None:
    _, outputs = outputs_of(processed, "siemens")
    phantom = processed["phantom"]
    centre = np.argwhere(phantom.lesion_masks["infiltrative_focus"]).mean(axis=0).round()
    entries = [e for e in outputs if e["kind"] == "overlay"]
    overlay = next(d for d in (load(processed, e) for e in entries)
                   if d.InstanceNumber == centre[0] + 1)
    pixels = overlay.pixel_array
    assert overlay.PhotometricInterpretation == "RGB" and overlay.BurnedInAnnotation == "YES"
    rows_in, cols_in = phantom.labels.shape[1:]
    factor = -(-512 // max(rows_in, cols_in))  # upscaled to at least 512 px
    offset = (pixels.shape[1] - cols_in * factor) // 2
    assert pixels.shape[1] >= 512 and pixels.shape[0] == rows_in * factor + LEGEND_HEIGHT
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 200) & (pixels[..., 2] < 120)
    rows, cols = np.nonzero(yellow[: rows_in * factor])
    assert rows.size > 0
    assert abs(rows.mean() / factor - centre[1]) < 2
    assert abs((cols.mean() - offset) / factor - centre[2]) < 2
    legend = pixels[rows_in * factor:]
    assert (legend.max(axis=2) > 200).mean() > 0.01, "legend text and colour bar are drawn"
    outside = next(d for d in (load(processed, e) for e in entries) if d.InstanceNumber == 1)
    outside_yellow = ((outside.pixel_array[..., 0] > 200) & (outside.pixel_array[..., 1] > 200)
                      & (outside.pixel_array[..., 2] < 120))[: rows_in * factor]
    assert not outside_yellow.any(), "no focus outline on a slice without a focus"
    # Colour only inside localised marrow: everywhere else plain grey anatomy.
    image = pixels[: rows_in * factor, offset:offset + cols_in * factor].astype(int)
    coloured = (np.ptp(image, axis=2) > 30)[::factor, ::factor]
    marrow = (phantom.vertebra > 0) | (phantom.posterior > 0)
    near = ndimage.binary_dilation(marrow[int(centre[0])], iterations=2)
    assert coloured.sum() > 50 and (coloured & ~near).sum() <= 0.02 * coloured.sum()


#: The series built on another core (folder and kind names end so).
BESIDE = ("sr", "parametric_map", "derived_mr")


def test_each_series_is_handed_on_as_soon_as_it_is_written(tmp_path: Path) -> None:
    """The node sends a result series while the next is encoded: the hook sees a series only
    when all its files are on disk, before any later image series exists, and sees each file
    once. The SR and the map series are built on the second core meanwhile (the maps from
    the moment they exist): they may be on disk early, and are handed on in their place."""
    from marrownode.pipeline import analyse_study, discover

    write_datasets(build_study(StudyOptions(style="siemens", study_key="hook")), tmp_path / "in")
    (instances,) = discover([tmp_path / "in"])[0].values()
    out = tmp_path / "out"
    calls: list[tuple[list[dict], int]] = []

    def on_outputs(entries: list[dict]) -> None:
        assert all((out / e["path"]).is_file() for e in entries)
        written = sum(1 for p in out.rglob("*.dcm") if not p.parent.name.endswith(BESIDE))
        calls.append((entries, written))

    report = analyse_study(instances, settings_from_mapping({}), out, on_outputs=on_outputs)
    (dixon_set,) = report["dixon_sets"]
    assert [e for entries, _ in calls for e in entries] == dixon_set["outputs"]
    assert len(calls) == 8  # one call per series: summary, 2 PM, 2 derived MR, overlay, SEG, SR
    assert calls[0][0][0]["kind"] == "summary", "the page read first is sent first"
    assert calls[-1][0][0]["kind"] == "sr"
    assert [entries[0]["kind"] for entries, _ in calls[1:5]] == [
        "parametric_map", "parametric_map", "derived_mr", "derived_mr"]
    handed_on = 0
    for entries, written in calls:
        assert len({e["series_instance_uid"] for e in entries}) == 1
        handed_on += sum(not e["kind"].endswith(BESIDE) for e in entries)
        assert written == handed_on, "a later series was written before this one was handed on"


def test_result_files_are_byte_for_byte_what_pydicom_writes(tmp_path: Path,
                                                           monkeypatch) -> None:
    """The series encoder writes what a series' instances share once (results/encoding.py);
    every file it writes, of every kind, is exactly the file pydicom's own writer makes of
    the same data set (a patient name in three character sets included)."""
    from pydicom.filebase import DicomBytesIO

    from marrownode.results.encoding import SeriesEncoder

    expected = tmp_path / "pydicom"
    expected.mkdir()
    write = SeriesEncoder.write

    def and_pydicom_too(self: SeriesEncoder, dataset: Dataset, path: Path) -> None:
        write(self, dataset, path)
        buffer = DicomBytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        (expected / path.name).write_bytes(buffer.getvalue())

    monkeypatch.setattr(SeriesEncoder, "write", and_pydicom_too)
    datasets = build_study(StudyOptions(style="siemens", patient_name=NAME,
                                        study_key="res-bytes"))
    write_datasets(datasets, tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", settings_from_mapping({}))
    (study,) = report["studies"]
    outputs = [entry for dixon_set in study["dixon_sets"] for entry in dixon_set["outputs"]]
    assert {entry["kind"] for entry in outputs} == set(EXPECTED_COUNTS)
    for entry in outputs:
        written = (tmp_path / "out" / entry["path"]).read_bytes()
        assert written == (expected / Path(entry["path"]).name).read_bytes(), entry["kind"]


def test_an_sr_evidence_header_keeps_the_elements_as_read(tmp_path: Path) -> None:
    """The SR's evidence (results/build.py _header): every element but the bulk data, its
    value the source's, and left as read (unconverted) until highdicom asks for it: a
    whole-body station lists 256 images, and converting every element of each cost more
    than the rest of the list."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from marrownode.results.build import _header

    (path,) = write_datasets(build_study(StudyOptions(style="siemens", patient_name=NAME,
                                                      study_key="res-evidence"))[:1], tmp_path)
    source = dcmread(path)
    header = _header(source)
    bulk = {Tag("PixelData")}
    assert bulk <= set(source.keys()) and not bulk & set(header.keys())
    assert set(header.keys()) == set(source.keys()) - bulk
    tags = sorted(header.keys())  # (iterating a Dataset would convert its elements)
    raw = [tag for tag in tags if isinstance(header.get_item(tag), RawDataElement)]
    assert len(raw) > 20  # nothing was converted to build the header
    for tag in tags:
        assert header[tag].value == source[tag].value, tag
    assert str(header.PatientName) == NAME


def test_result_folders_are_synced_once_a_series_is_written(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Every result file is fsynced before its rename; the rename (and a new folder) is only
    durable once its folder is fsynced too. The series encoder does that once per series,
    deepest folder first, before the series' entries are handed on to the outbox (whose rows
    survive a power loss: the files they name must too)."""
    import os

    import marrownode.results.encoding as encoding_module
    from marrownode.results.encoding import SeriesEncoder

    synced: list[Path] = []
    monkeypatch.setattr(encoding_module, "fsync_directory", synced.append)
    study_datasets = build_study(StudyOptions(style="siemens", study_key="res-durable"))
    datasets = study_datasets[:3]
    out = tmp_path / "results" / "study"
    encoder = SeriesEncoder()
    for dataset in datasets[:2]:
        encoder.write(dataset, out / "set" / "01-a" / f"{dataset.SOPInstanceUID}.dcm")
    assert synced == []  # not once per file
    encoder.make_durable()
    assert synced == [out / "set" / "01-a", out / "set", out, tmp_path / "results", tmp_path]
    synced.clear()
    encoder.write(datasets[2], out / "set" / "02-b" / f"{datasets[2].SOPInstanceUID}.dcm")
    encoder.make_durable()  # a new series beside: its folder and the set's folder
    assert synced == [out / "set" / "02-b", out / "set"]

    # The pipeline: every result series' folder is synced (on one core, so the map series
    # are written in this process and the spy sees them).
    synced.clear()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    write_datasets(study_datasets, tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", settings_from_mapping({}))
    (study,) = report["studies"]
    folders = {(tmp_path / "out" / entry["path"]).parent
               for dixon_set in study["dixon_sets"] for entry in dixon_set["outputs"]}
    assert len(folders) >= len(EXPECTED_COUNTS)  # (each map has its own series)
    assert folders <= set(synced)


def test_derived_map_values_are_the_rounded_clipped_percent_with_padding() -> None:
    """The derived MR's stored values: round(percent) clipped to the range, the padding value
    where the map is undefined (NaN, infinite), as np.where over nan_to_num gave them."""
    from marrownode.results.derived_mr import PIXEL_PADDING_VALUE, stored_percent

    rng = np.random.default_rng(13)
    values = rng.normal(20, 80, (4, 30, 30)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[0, 0, :7] = [np.inf, -np.inf, 0.5, 1.5, -0.5, 100.5, -100.5]
    for low, high in ((-100, 100), (0, 100)):
        expected = np.where(np.isfinite(values),
                            np.rint(np.nan_to_num(values)).clip(low, high),
                            PIXEL_PADDING_VALUE).astype(np.int16)
        found = stored_percent(values, low, high)
        assert found.dtype == np.int16 and (found == expected).all()
    assert stored_percent(values, -100, 100)[0, 0, 0] == PIXEL_PADDING_VALUE
