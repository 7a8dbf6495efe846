"""Real MR (CHAOS, Philips 1.5 T axial dual echo, normal marrow): what `marrownode process`
reports must agree with ROIs a reader placed by eye, and claim nothing else as marrow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.conftest import require_binary

DATA = Path(__file__).resolve().parents[1] / "data" / "chaos-2154211114-lumbar"


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("chaos")
    result = subprocess.run([sys.executable, "-m", "marrownode", "process", str(DATA),
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    (study,) = report["studies"]
    (dixon_set,) = study["dixon_sets"]
    return dixon_set, out


def _in_phase_slices() -> list:
    datasets = [dcmread(p) for p in sorted(DATA.glob("*.dcm"))]
    in_phase = [d for d in datasets if float(d.EchoTime) > 4.0]
    return sorted(in_phase, key=lambda d: float(d.ImagePositionPatient[2]))


def test_normal_real_marrow_is_found_and_reads_normal(processed) -> None:
    dixon_set, _ = processed
    assert dixon_set["marrow"]["localised"] is True
    assert len(dixon_set["vertebrae"]) >= 2
    assert dixon_set["foci"] == [], "normal marrow: not one focus (discs, canal, muscle...)"
    assert dixon_set["pattern"] == "normal"
    for vertebra in dixon_set["vertebrae"]:
        assert vertebra["pattern"] == "normal"
        assert 55.0 < vertebra["signal_loss_percent_median"] < 90.0
        assert vertebra["fraction_below_threshold"] < 0.05
        assert vertebra["in_phase_to_muscle_ratio"] > 1.0  # normal marrow: brighter than muscle
    assert "marrow_darker_than_muscle" not in dixon_set["flags"]


def test_each_vertebra_agrees_with_the_manual_rois_on_its_slices(processed) -> None:
    """The reader's ROIs on a vertebra's slices and the localiser's median over that vertebra
    agree within a few points; and every manual ROI lies inside a localised vertebra."""
    dixon_set, _ = processed
    slices = _in_phase_slices()
    rois = json.loads((DATA / "manual-rois.json").read_text())["rois"]
    by_vertebra: dict[str, list[float]] = {}
    for roi in rois:
        position = np.array([float(v) for v in slices[roi["slice"]].ImagePositionPatient])
        spacing = [float(v) for v in slices[roi["slice"]].PixelSpacing]
        centre = position + np.array([roi["column"] * spacing[1], roi["row"] * spacing[0], 0.0])
        vertebra = min(dixon_set["vertebrae"], key=lambda v: np.linalg.norm(
            np.array(v["centroid_patient_mm"]) - centre))
        assert np.linalg.norm(np.array(vertebra["centroid_patient_mm"]) - centre) < 25.0
        by_vertebra.setdefault(vertebra["label"], []).append(roi["median_signal_loss_percent"])
    assert len(by_vertebra) >= 3
    for vertebra in dixon_set["vertebrae"]:
        if vertebra["label"] in by_vertebra:
            manual = float(np.mean(by_vertebra[vertebra["label"]]))
            assert vertebra["signal_loss_percent_median"] == pytest.approx(manual, abs=4.0)


def test_real_outputs_are_valid_and_colour_only_the_spine(processed) -> None:
    dixon_set, out = processed
    dciodvfy = require_binary("/usr/bin/dciodvfy")
    kinds: dict[str, Path] = {}
    for entry in dixon_set["outputs"]:
        kinds.setdefault(entry["kind"], out / entry["path"])
    assert set(kinds) == {"summary", "parametric_map", "derived_mr", "overlay", "sr",
                         "segmentation"}
    for kind, path in kinds.items():
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], (kind, errors)
    overlays = sorted((dcmread(out / e["path"]) for e in dixon_set["outputs"]
                       if e["kind"] == "overlay"), key=lambda d: int(d.InstanceNumber))
    for overlay in overlays:
        image = overlay.pixel_array[:512].astype(int)
        coloured = np.ptp(image, axis=2) > 30
        if coloured.any():  # only around the spine: the middle of the image, left to right
            columns = np.nonzero(coloured)[1]
            assert 512 * 0.35 < columns.mean() < 512 * 0.65
            assert np.ptp(columns) < 512 * 0.3


def test_the_readers_circles_sent_as_a_presentation_state_are_measured_on_real_mr(
        tmp_path: Path) -> None:
    """The manual ROIs, as a PACS viewer would save them (GSPS circles on the in-phase
    images), measured by the node: the ratio of the in- and opposed-phase means over each
    circle, computed here independently from the pixel data, is what the answer says."""
    import shutil

    import highdicom as hd

    from marrownode.config import Settings
    from marrownode.pipeline import process_paths

    slices = _in_phase_slices()
    opposed = {tuple(round(float(v), 2) for v in d.ImagePositionPatient): d
               for d in (dcmread(p) for p in sorted(DATA.glob("*.dcm")))
               if float(d.EchoTime) <= 4.0}
    rois = json.loads((DATA / "manual-rois.json").read_text())["rois"]
    layer = hd.pr.GraphicLayer(layer_name="READER", order=1)
    annotations, expected = [], {}
    for number, roi in enumerate(rois, start=1):
        image = slices[roi["slice"]]
        centre = [roi["column"] + 0.5, roi["row"] + 0.5]  # image coordinates of the centre
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[image], graphic_layer=layer, graphic_objects=[hd.pr.GraphicObject(
                graphic_type="CIRCLE", graphic_data=np.array([centre, [centre[0] + 5, centre[1]]]),
                units="PIXEL", tracking_id=f"reader {number}", tracking_uid=hd.UID())]))
        rows, cols = np.indices(image.pixel_array.shape)
        inside = (rows - roi["row"]) ** 2 + (cols - roi["column"]) ** 2 <= 25
        partner = opposed[tuple(round(float(v), 2) for v in image.ImagePositionPatient)]
        ip_mean = float(image.pixel_array[inside].mean())
        op_mean = float(partner.pixel_array[inside].mean())
        expected[f"reader {number}"] = (100.0 * (1 - op_mean / ip_mean), int(inside.sum()),
                                        roi["median_signal_loss_percent"])
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=slices, series_instance_uid=hd.UID(), series_number=200,
        sop_instance_uid=hd.UID(), instance_number=1, content_label="READER",
        graphic_layers=[layer], graphic_annotations=annotations, manufacturer="PACS viewer",
        manufacturer_model_name="viewer", software_versions="1", device_serial_number="1")
    folder = tmp_path / "in"
    shutil.copytree(DATA, folder, ignore=shutil.ignore_patterns("*.json", "*.md"))
    gsps.save_as(folder / "gsps.dcm", enforce_file_format=True)
    report = process_paths([folder], tmp_path / "out", Settings())
    (request,) = report["studies"][0]["requests"]
    assert request["kind"] == "gsps" and len(request["measurements"]) == len(rois)
    for measurement in request["measurements"]:
        loss, voxels, reader_median = expected[measurement["label"]]
        assert measurement["voxel_count"] == voxels
        assert measurement["signal_loss_percent"] == pytest.approx(loss, abs=0.05)
        assert measurement["signal_loss_percent"] == pytest.approx(reader_median, abs=6.0)
        assert measurement["below_threshold"] is False  # normal marrow
