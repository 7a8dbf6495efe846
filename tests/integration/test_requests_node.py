"""Measurement requests through the running node (#17): a region drawn in the viewer and sent
into the study comes back measured, as an SR in the same study at the PACS."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import dcmread

from marrownode.net.standin import StandInPACS
from marrownode.synthetic.studies import StudyOptions, build_study, extra_series
from tests.conftest import results_delivered, wait_until
from tests.requests import roi_report
from tests.scu import send

VIEWER = {"manufacturer": "viewer", "manufacturer_model_name": "viewer",
          "software_versions": "1", "device_serial_number": "1"}
ANSWER = "marrownode measurements of your regions"


def roi_sr(image, label: str, tracking_uid: str):
    """A viewer's TID 1500 SR with one polyline ROI (a 3 x 3 pixel square) on image."""
    rows, cols = int(image.Rows), int(image.Columns)
    row, col = rows // 2, cols // 2
    square = np.array([[col - 1, row - 1], [col + 2, row - 1], [col + 2, row + 2],
                       [col - 1, row + 2], [col - 1, row - 1]], dtype=np.float64)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=label),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=square,
            source_image=hd.sr.SourceImageForRegion.from_source_image(image)))
    return roi_report([group], [image], 77)


def answers(pacs: StandInPACS) -> list:
    found = []
    for path in pacs.folder.glob("*.dcm"):
        dataset = dcmread(path, stop_before_pixels=True)
        if dataset.get("SeriesDescription") == ANSWER:
            found.append(dataset)
    return found


def test_a_region_sent_after_the_analysis_is_answered_in_the_study(node_factory,
                                                                  tmp_path) -> None:
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = node_factory(completion={"idle_seconds": 60},
                            destinations=[{"name": "pacs", "ae_title": "STANDIN",
                                           "host": "127.0.0.1", "port": pacs.port}])
        datasets = build_study(StudyOptions(style="siemens", study_key="roi-node"))
        study_uid = datasets[0].StudyInstanceUID
        assert send(node.receiver.port, datasets) == [0] * len(datasets)
        wait_until(lambda: results_delivered(node, study_uid), timeout=90)
        before = len(pacs.received)
        image = next(d for d in datasets if d.SeriesDescription.endswith("_in"))
        tracking = hd.UID()
        request = roi_sr(image, "my lesion", tracking)
        assert send(node.receiver.port, [request]) == [0]
        wait_until(lambda: len(answers(pacs)) == 1, timeout=90)
        (answer,) = answers(pacs)
        assert answer.StudyInstanceUID == study_uid
        content = hd.sr.Comprehensive3DSR.from_dataset(dcmread(
            pacs.folder / f"{answer.SOPInstanceUID}.dcm")).content
        (group,) = content.get_planar_roi_measurement_groups()
        assert str(group.tracking_uid) == tracking and group.tracking_identifier == "my lesion"
        names = {m.name.meaning for m in group.get_measurements()}
        assert "Chemical shift signal loss" in names
        study = node.index.studies.study(study_uid)
        assert "1 measurement request(s) answered" in study["reason"]
        # The set's results were re-sent under the same UIDs (a re-send replaces), not doubled.
        assert len(set(pacs.received)) == before + 1
    finally:
        pacs.stop()


def test_a_region_in_a_study_without_a_dixon_set_gets_an_answer_saying_so(node_factory,
                                                                         tmp_path) -> None:
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = node_factory(completion={"idle_seconds": 1.0},
                            destinations=[{"name": "pacs", "ae_title": "STANDIN",
                                           "host": "127.0.0.1", "port": pacs.port}])
        t2 = extra_series(StudyOptions(study_key="roi-t2"), "t2")
        request = roi_sr(t2[0], "on T2", hd.UID())
        assert send(node.receiver.port, [*t2, request]) == [0] * (len(t2) + 1)
        wait_until(lambda: len(answers(pacs)) == 1, timeout=90)
        (answer,) = answers(pacs)
        content = hd.sr.Comprehensive3DSR.from_dataset(dcmread(
            pacs.folder / f"{answer.SOPInstanceUID}.dcm")).content
        (group,) = content.get_image_measurement_groups()
        (evaluation,) = group.get_qualitative_evaluations()
        assert evaluation.value.meaning == "No in-/opposed-phase set in the study"
        study = node.index.studies.study(t2[0].StudyInstanceUID)
        assert study["state"] == "no_dixon_set" and "answered" in study["reason"]
    finally:
        pacs.stop()


def test_a_request_after_retention_fetches_the_images_back_from_orthanc(
        node_factory, orthanc_factory, tmp_path) -> None:
    """End to end: a study analysed and removed by retention; the radiologist's ROI SR is
    stored into Orthanc and forwarded to the node; the node fetches the images back with
    C-GET, measures, and the answer appears in the same study in Orthanc."""
    import time

    from pydicom import dcmread as read

    from marrownode.synthetic.studies import write_datasets
    from tests.integration.test_end_to_end import wait_for_results
    from tests.orthanc import node_with_orthanc

    node, orthanc = node_with_orthanc(node_factory, orthanc_factory)
    datasets = build_study(StudyOptions(style="siemens", study_key="roi-retrieve"))
    study_uid = datasets[0].StudyInstanceUID
    write_datasets(datasets, tmp_path / "scanner")
    for path in sorted((tmp_path / "scanner").rglob("*.dcm")):
        orthanc.upload(path)
    study_id = orthanc.study_id(study_uid)
    orthanc.post("/modalities/marrownode/store", {"Resources": [study_id], "Synchronous": True})
    wait_for_results(orthanc, study_uid)
    wait_until(lambda: results_delivered(node, study_uid), timeout=60)
    assert node.retention.sweep(time.time() + 100 * 3600) == [study_uid]  # images gone
    assert node.index.studies.instances(study_uid) == []

    image = next(d for d in datasets if d.SeriesDescription.endswith("_in"))
    tracking = hd.UID()
    request = roi_sr(image, "after retention", tracking)
    request.save_as(tmp_path / "roi.dcm", enforce_file_format=True)
    uploaded = orthanc.upload(tmp_path / "roi.dcm")
    orthanc.post("/modalities/marrownode/store",
                 {"Resources": [uploaded["ID"]], "Synchronous": True})

    def answered() -> list[dict]:
        return [s for s in orthanc.series(study_uid)
                if s["MainDicomTags"].get("SeriesDescription") == ANSWER]

    wait_until(lambda: bool(answered()), timeout=120)
    (series,) = answered()
    (instance,) = series["Instances"]
    path = tmp_path / "answer.dcm"
    path.write_bytes(orthanc._request(f"/instances/{instance}/file", raw=True))
    content = hd.sr.Comprehensive3DSR.from_dataset(read(path)).content
    (group,) = content.get_planar_roi_measurement_groups()
    assert str(group.tracking_uid) == tracking
    assert "Chemical shift signal loss" in {m.name.meaning for m in group.get_measurements()}
    assert len(node.index.studies.instances(study_uid)) >= 40  # the MR images came back
