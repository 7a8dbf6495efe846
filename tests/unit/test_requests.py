"""Measurement requests (#17): regions drawn by a radiologist or an AI platform — a highdicom
TID 1500 SR with planar ROIs, a highdicom GSPS with graphic annotations, a highdicom SEG — are
measured on the anatomical phantom against its analytic truth and answered with a valid SR."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes
from scipy import ndimage

from marrownode.config import Settings
from marrownode.pipeline import process_paths
from marrownode.synthetic.anatomy import (
    ANATOMY_CODES,
    DEFAULT_GRIDS,
    anatomical_phantom,
    tissue_truth,
)
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets
from tests.conftest import require_binary
from tests.requests import roi_report

VIEWER = {"manufacturer": "OHIF-like viewer", "manufacturer_model_name": "viewer",
          "software_versions": "1", "device_serial_number": "1"}


def _phantom():
    """The sagittal anatomical phantom without partial volume: exact truth per voxel."""
    shape, spacing, thickness = DEFAULT_GRIDS["sagittal"]
    phantom = anatomical_phantom("infiltrative_focus", "sagittal", shape=shape,
                                 pixel_spacing_mm=spacing, slice_thickness_mm=thickness,
                                 supersample=1)
    return phantom, spacing, thickness


def _inside(mask2d: np.ndarray, margin: int) -> tuple[int, int]:
    """A pixel (row, column) whose (2 margin + 1)-square neighbourhood is in the region."""
    deep = ndimage.binary_erosion(mask2d, structure=np.ones((3, 3)), iterations=margin)
    rows, cols = np.nonzero(deep)
    centre = np.array([rows.mean(), cols.mean()])
    best = np.argmin((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2)
    return int(rows[best]), int(cols[best])


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("requests")
    phantom, spacing, thickness = _phantom()
    datasets = build_study(StudyOptions(style="siemens", study_key="requests"), phantom)
    in_phase = sorted((d for d in datasets if d.SeriesDescription.endswith("_in")),
                      key=lambda d: int(d.InstanceNumber))
    lesion = phantom.labels == ANATOMY_CODES["lesion"]
    k = int(np.argmax(lesion.sum(axis=(1, 2))))
    row, col = _inside(lesion[k], 1)
    marrow_k = k
    marrow = (phantom.labels[marrow_k] == ANATOMY_CODES["marrow"]) & ~ndimage.binary_dilation(
        lesion[marrow_k], iterations=6)
    m_row, m_col = _inside(marrow, 1)
    image = in_phase[k]
    # Image coordinates (column, row), pixel centres at +0.5.
    # The 3 x 3 pixels around (row, col): their outer edges.
    square = np.array([[col - 1, row - 1], [col + 2, row - 1], [col + 2, row + 2],
                       [col - 1, row + 2], [col - 1, row - 1]], dtype=np.float64)
    # Axes 3 and 2 pixels long around the pixel centre (m_row, m_col): 5 pixels inside.
    ellipse = np.array([[m_col - 1.0, m_row + 0.5], [m_col + 2.0, m_row + 0.5],
                        [m_col + 0.5, m_row - 0.5], [m_col + 0.5, m_row + 1.5]])
    groups = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion"),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=square,
                source_image=hd.sr.SourceImageForRegion.from_source_image(image))),
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="marrow"),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.ELLIPSE, graphic_data=ellipse,
                source_image=hd.sr.SourceImageForRegion.from_source_image(image))),
    ]
    sr = roi_report(groups, [image], 100, "OHIF-like viewer")
    layer = hd.pr.GraphicLayer(layer_name="ROIS", order=1)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image], series_instance_uid=hd.UID(), series_number=101,
        sop_instance_uid=hd.UID(), instance_number=1, content_label="ROIS",
        graphic_layers=[layer], graphic_annotations=[hd.pr.GraphicAnnotation(
            referenced_images=[image], graphic_layer=layer, graphic_objects=[
                hd.pr.GraphicObject(graphic_type="ELLIPSE", graphic_data=ellipse, units="PIXEL",
                                    tracking_id="marrow ellipse", tracking_uid=hd.UID()),
                hd.pr.GraphicObject(graphic_type="POLYLINE", graphic_data=square,
                                    units="PIXEL", tracking_id="lesion square",
                                    tracking_uid=hd.UID())])], **VIEWER)
    lesion_mask = np.zeros_like(lesion)
    for z in (k - 1, k, k + 1):  # inside the lesion on three slices: no partial volume
        lesion_mask[z] = ndimage.binary_erosion(lesion[z], iterations=1)
    seg = hd.seg.Segmentation(
        source_images=in_phase, pixel_array=lesion_mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="lesion (AI)",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL, tracking_uid=hd.UID(),
            tracking_id="lesion (AI)")],
        series_instance_uid=hd.UID(), series_number=102, sop_instance_uid=hd.UID(),
        instance_number=1, **VIEWER)
    write_datasets([*datasets, sr, gsps, seg], base / "in")
    report_json = process_paths([base / "in"], base / "out", Settings())
    lesion_mm3 = float(lesion_mask.sum()) * thickness * spacing * spacing
    return {"report": report_json, "base": base, "sr": sr, "gsps": gsps, "seg": seg,
            "lesion_voxels": int(lesion_mask.sum()), "lesion_mm3": lesion_mm3,
            "spacing": spacing, "square": square, "k": k}


def _by_kind(measured: dict) -> dict[str, dict]:
    (study,) = measured["report"]["studies"]
    return {r["kind"]: r for r in study["requests"]}


def test_every_request_kind_is_found_and_each_region_measured(measured) -> None:
    requests = _by_kind(measured)
    assert set(requests) == {"sr", "gsps", "seg"}
    assert requests["sr"]["sop_instance_uid"] == measured["sr"].SOPInstanceUID
    labels = {kind: [m["label"] for m in r["measurements"]] for kind, r in requests.items()}
    assert labels == {"sr": ["lesion", "marrow"],
                      "gsps": ["marrow ellipse", "lesion square"], "seg": ["lesion (AI)"]}
    for request in requests.values():
        assert all("reason" not in m for m in request["measurements"]), request


@pytest.mark.parametrize("kind, label, tissue", [
    ("sr", "lesion", "lesion"), ("sr", "marrow", "marrow"),
    ("gsps", "lesion square", "lesion"), ("gsps", "marrow ellipse", "marrow"),
    ("seg", "lesion (AI)", "lesion"),
])
def test_measurements_match_the_phantom_truth(measured, kind: str, label: str,
                                              tissue: str) -> None:
    (measurement,) = [m for m in _by_kind(measured)[kind]["measurements"] if m["label"] == label]
    truth = tissue_truth(tissue)
    assert measurement["signal_loss_percent"] == pytest.approx(truth["signal_loss_percent"],
                                                               abs=0.5)
    assert measurement["sir"] == pytest.approx(truth["sir"], abs=0.005)
    assert measurement["fat_fraction_percent"] == pytest.approx(truth["fat_fraction_percent"],
                                                                abs=0.5)
    assert measurement["fat_fraction_method"] == "water_fat"
    below = truth["signal_loss_percent"] < 20.0
    assert measurement["below_threshold"] is below
    assert measurement["category"] == ("low_signal_loss" if below else "expected_signal_loss")
    if kind == "seg":
        assert measurement["volume_mm3"] == pytest.approx(measured["lesion_mm3"], rel=0.01)
    else:
        pixel = measured["spacing"] ** 2
        pixels = 9 if label.startswith("lesion") else 5  # 3 x 3 square; ellipse: centre + 4
        assert measurement["area_mm2"] == pytest.approx(pixels * pixel)
        assert measurement["voxel_count"] == pixels


def test_the_answers_are_valid_sr_with_the_requesters_tracking(measured) -> None:
    dciodvfy = require_binary("/usr/bin/dciodvfy")
    requests = _by_kind(measured)
    for kind, request in requests.items():
        (output,) = request["outputs"]
        path = measured["base"] / "out" / output["path"]
        checked = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True,
                                 timeout=120)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], f"{kind}: {errors}"
        answer = hd.sr.Comprehensive3DSR.from_dataset(dcmread(path))
        request_uid = request["sop_instance_uid"]
        assert request_uid in {i.ReferencedSOPInstanceUID
                               for s in answer.CurrentRequestedProcedureEvidenceSequence
                               for r in s.ReferencedSeriesSequence
                               for i in r.ReferencedSOPSequence}
        groups = answer.content.get_planar_roi_measurement_groups() + \
            answer.content.get_image_measurement_groups()
        sent = {m["tracking_uid"] for m in request["measurements"]}
        assert {str(g.tracking_uid) for g in groups} == sent
    sr_request = measured["sr"]
    asked = {str(g.tracking_uid) for g in hd.sr.Comprehensive3DSR.from_dataset(
        sr_request).content.get_planar_roi_measurement_groups()}
    assert {m["tracking_uid"] for m in requests["sr"]["measurements"]} == asked


def test_the_same_request_and_settings_give_the_same_answer_uids(measured,
                                                                 tmp_path: Path) -> None:
    again = process_paths([measured["base"] / "in"], tmp_path / "out", Settings())
    first = {r["kind"]: r["outputs"][0]["sop_instance_uid"]
             for r in measured["report"]["studies"][0]["requests"]}
    second = {r["kind"]: r["outputs"][0]["sop_instance_uid"]
              for r in again["studies"][0]["requests"]}
    assert first == second


@pytest.mark.parametrize("loss, fat, unambiguous, in_phase_first, category", [
    (15.0, 93.0, True, False, "fat_containing"),  # haemangioma / focal fat
    (15.0, 93.0, False, False, "low_signal_loss"),  # two-point fat fraction cannot tell
    (70.0, 65.0, True, False, "expected_signal_loss"),  # normal marrow
    (13.0, 7.0, True, False, "low_signal_loss"),  # infiltration
    (18.0, 20.0, True, True, "indeterminate"),  # in-phase first, within the 6-point margin
    (float("nan"), 20.0, True, False, "indeterminate"),
])
def test_region_categories(loss: float, fat: float, unambiguous: bool, in_phase_first: bool,
                           category: str) -> None:
    from marrownode.quant.regions import categorise

    assert categorise(loss, fat, unambiguous, 20.0, in_phase_first, 6.0) == category


def test_regions_off_the_dixon_slices_are_refused_with_the_reason() -> None:
    from marrownode.quant.geometry import VolumeGeometry
    from marrownode.quant.regions import place_planar

    geometry = VolumeGeometry.identity((4.0, 1.0, 1.0))  # slices 4 mm apart along x
    shape = (5, 20, 20)
    square = np.array([[0.0, 0.0, -5.0], [0.0, 0.0, -9.0], [0.0, 4.0, -9.0], [0.0, 4.0, -5.0]])
    on_slice = place_planar(geometry, shape, "POLYLINE", square + np.array([8.8, 0.0, 0.0]))
    assert on_slice.mask is not None and on_slice.slice_index == 2  # 0.2 slice off: placed
    assert on_slice.mask[2].sum() == 25  # centres inside or on the outline: rows 5-9, cols 0-4
    between = place_planar(geometry, shape, "POLYLINE", square + np.array([10.0, 0.0, 0.0]))
    assert between.mask is None and "not a Dixon slice" in between.reason
    oblique = square + np.array([[8.0, 0, 0], [8.0, 0, 0], [12.0, 0, 0], [12.0, 0, 0]])
    assert "not a Dixon slice" in place_planar(geometry, shape, "POLYLINE", oblique).reason


def test_a_region_drawn_on_our_signal_loss_map_is_measured(measured, tmp_path: Path) -> None:
    """The radiologist may draw on marrownode's own map (it lies on the in-phase geometry and
    the node has written it, though it never received it)."""
    import shutil

    (study,) = measured["report"]["studies"]
    (dixon_set,) = study["dixon_sets"]
    maps = sorted((e for e in dixon_set["outputs"] if e["kind"] == "derived_mr"
                   and "signal loss" in e["series_description"]), key=lambda e: e["path"])
    shutil.copytree(measured["base"] / "out", tmp_path / "out")
    image = next(d for d in (dcmread(tmp_path / "out" / e["path"]) for e in maps)
                 if int(d.InstanceNumber) == measured["k"] + 1)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="on the map"),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=measured["square"],
            source_image=hd.sr.SourceImageForRegion.from_source_image(image)))
    request = roi_report([group], [image], 103, "viewer")
    write_datasets([request], tmp_path / "more")
    again = process_paths([measured["base"] / "in", tmp_path / "more"], tmp_path / "out",
                          Settings())
    (answer,) = [r for r in again["studies"][0]["requests"]
                 if r["sop_instance_uid"] == request.SOPInstanceUID]
    (measurement,) = answer["measurements"]
    assert "reason" not in measurement, measurement
    assert measurement["signal_loss_percent"] == pytest.approx(
        tissue_truth("lesion")["signal_loss_percent"], abs=0.5)
    assert measurement["voxel_count"] == 9


def test_vertebra_segments_replace_the_image_based_localisation(tmp_path: Path) -> None:
    """An AI platform's SEG of the vertebral bodies, coded with the CID 7603 SNOMED codes:
    the per-vertebra findings use those bodies and names (marrow.method "segmentation")."""
    phantom, _, _ = _phantom()
    datasets = build_study(StudyOptions(style="siemens", study_key="vertebra-seg"), phantom)
    in_phase = sorted((d for d in datasets if d.SeriesDescription.endswith("_in")),
                      key=lambda d: int(d.InstanceNumber))
    marrow = np.isin(phantom.labels, [ANATOMY_CODES["marrow"], ANATOMY_CODES["lesion"]])
    components, count = ndimage.label(marrow)
    sizes = ndimage.sum(marrow, components, range(1, count + 1))
    bodies = [int(i) + 1 for i in np.argsort(sizes)[::-1][:5]]  # the five bodies
    # Cranio-caudal: the sagittal phantom's rows run feet-ward, so smaller mean row = higher.
    bodies.sort(key=lambda label: np.argwhere(components == label)[:, 1].mean())
    names = ["T12", "L1", "L2", "L3", "L4"]
    codes_of = {"T12": "23215003", "L1": "66794005", "L2": "14293000", "L3": "36470004",
                "L4": "11994002"}
    pixel_array = np.stack([(components == label) for label in bodies], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=in_phase, pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"vertebrae_{name}",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(codes_of[name], "SCT",
                                                       f"{name} vertebra"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="TotalSegmentator", version="2", family=codes.DCM.ArtificialIntelligence))
            for n, name in enumerate(names, start=1)],
        series_instance_uid=hd.UID(), series_number=120, sop_instance_uid=hd.UID(),
        instance_number=1, **VIEWER)
    write_datasets([*datasets, seg], tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    (dixon_set,) = report["studies"][0]["dixon_sets"]
    assert dixon_set["marrow"]["method"] == "segmentation"
    assert [v["label"] for v in dixon_set["vertebrae"]] == names
    lesion_body = next(n for n, label in zip(names, bodies, strict=True)
                       if (phantom.labels[components == label] == ANATOMY_CODES["lesion"]).any())
    assert {focus["vertebra"] for focus in dixon_set["foci"]} == {lesion_body}
    normal = next(v for v in dixon_set["vertebrae"] if v["label"] != lesion_body)
    assert normal["voxel_count"] == 576 and normal["signal_loss_percent_median"] == pytest.approx(
        tissue_truth("marrow")["signal_loss_percent"], abs=1.0)


def test_a_3d_region_in_patient_coordinates_is_measured_like_its_2d_twin(measured,
                                                                       tmp_path: Path) -> None:
    """SCOORD3D (3D Slicer, dcmqi): the lesion square given in patient coordinates on the
    frame of reference measures what the same square drawn on the image does."""
    from marrownode.requests.read import ImagePlane

    image = next(d for d in (dcmread(p) for p in sorted((measured["base"] / "in").rglob("*.dcm")))
                 if d.get("SeriesDescription", "").endswith("_in")
                 and int(d.InstanceNumber) == measured["k"] + 1)
    orientation = np.array([float(v) for v in image.ImageOrientationPatient])
    plane = ImagePlane(np.array([float(v) for v in image.ImagePositionPatient]),
                       orientation[:3], orientation[3:],
                       tuple(float(v) for v in image.PixelSpacing))
    corners = plane.to_patient(measured["square"][:-1])
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion 3D"),
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
            graphic_data=np.vstack([corners, corners[:1]]),
            frame_of_reference_uid=image.FrameOfReferenceUID))
    request = roi_report([group], [image], 104, "3D Slicer")
    write_datasets([request], tmp_path / "more")
    again = process_paths([measured["base"] / "in", tmp_path / "more"], tmp_path / "out",
                          Settings())
    (answer,) = [r for r in again["studies"][0]["requests"]
                 if r["sop_instance_uid"] == request.SOPInstanceUID]
    (measurement,) = answer["measurements"]
    (twin,) = [m for m in _by_kind(measured)["sr"]["measurements"] if m["label"] == "lesion"]
    for key in ("signal_loss_percent", "sir", "fat_fraction_percent", "voxel_count"):
        assert measurement[key] == twin[key], key
