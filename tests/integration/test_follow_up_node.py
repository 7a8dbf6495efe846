"""Issue 27 through the running node, Orthanc as the PACS: the follow-up's comparison appears
in the follow-up's study in Orthanc, whether the node still holds the baseline or has deleted
it (then it finds the baseline in Orthanc by C-FIND and retrieves only its marrownode SR);
and a baseline that arrives after its follow-up has the follow-up compared again."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from marrownode.synthetic.follow_up import LESIONS, follow_up_pair
from marrownode.vocabulary import PriorSource
from tests.conftest import results_delivered, wait_until
from tests.orthanc import node_with_orthanc
from tests.scu import send

REPORT = "marrownode sagittal chemical-shift report (SR)"


@pytest.fixture(scope="module")
def pair() -> tuple[list[Dataset], list[Dataset]]:
    return follow_up_pair(patient_id="MN-FU-E2E", key="e2e", supersample=1)


def _reports_in_orthanc(orthanc: Any, study_uid: str, folder: Path) -> list[Dataset]:
    """Every marrownode SR of the study in Orthanc."""
    found = []
    for series in orthanc.series(study_uid):
        if series["MainDicomTags"].get("SeriesDescription") != REPORT:
            continue
        for instance in series["Instances"]:
            path = folder / f"{instance}.dcm"
            path.write_bytes(orthanc._request(f"/instances/{instance}/file", raw=True))
            found.append(dcmread(path))
    return found


def _compared(reports: list[Dataset]) -> list[Dataset]:
    return [r for r in reports if "PertinentOtherEvidenceSequence" in r]


def _comparison(node: Any, study_uid: str) -> dict[str, Any] | None:
    report = node.index.studies.db.json(node.index.studies.study(study_uid)["report"], "report")
    return report["dixon_sets"][0].get("comparison") if report else None


def _analysed_and_delivered(node: Any, study_uid: str) -> bool:
    study = node.index.studies.study(study_uid)
    return bool(study and study["state"] == "analysed" and results_delivered(node, study_uid))


def _uids(pair: tuple[list[Dataset], list[Dataset]]) -> tuple[str, str]:
    return str(pair[0][0].StudyInstanceUID), str(pair[1][0].StudyInstanceUID)


def _send_and_wait(node: Any, datasets: list[Dataset]) -> None:
    """Send a study to the node; wait until it is analysed and its results delivered."""
    assert set(send(node.receiver.port, datasets)) == {0}
    uid = str(datasets[0].StudyInstanceUID)
    wait_until(lambda: _analysed_and_delivered(node, uid), timeout=120)


def _assert_statuses(comparison: dict[str, Any] | None, source: PriorSource) -> None:
    assert comparison is not None
    assert comparison["prior"]["source"] == source
    assert {f["level"]: f["status"] for f in comparison["foci"]} == {
        lesion.level: lesion.status for lesion in LESIONS}


def test_the_node_holding_the_baseline_compares_the_follow_up_in_its_first_report(
        node_factory: Any, orthanc_factory: Any, pair: tuple[list[Dataset], list[Dataset]],
        tmp_path: Path) -> None:
    node, orthanc = node_with_orthanc(node_factory, orthanc_factory)
    baseline, follow_up = pair
    base_uid, follow_uid = _uids(pair)
    _send_and_wait(node, baseline)
    _send_and_wait(node, follow_up)
    _assert_statuses(_comparison(node, follow_uid), PriorSource.INDEX)
    (report,) = _reports_in_orthanc(orthanc, follow_uid, tmp_path)  # compared at once
    (baseline_report,) = _reports_in_orthanc(orthanc, base_uid, tmp_path)
    assert (report.PertinentOtherEvidenceSequence[0].StudyInstanceUID == base_uid)
    dump = subprocess.run(["dsrdump", str(report.filename)], capture_output=True, text=True,
                          check=True).stdout
    assert "Grown since prior study" in dump and "New since prior study" in dump
    assert "PertinentOtherEvidenceSequence" not in baseline_report


def test_a_node_that_deleted_the_baseline_finds_it_in_orthanc_and_the_comparison_follows(
        node_factory: Any, orthanc_factory: Any, pair: tuple[list[Dataset], list[Dataset]],
        tmp_path: Path) -> None:
    node, orthanc = node_with_orthanc(node_factory, orthanc_factory)
    baseline, follow_up = pair
    base_uid, follow_uid = _uids(pair)
    _send_and_wait(node, baseline)
    wait_until(lambda: len(_reports_in_orthanc(orthanc, base_uid, tmp_path)) == 1, timeout=60)
    node.operator.delete("test", base_uid)  # as `marrownode delete` does
    assert node.index.studies.study(base_uid) is None
    images_before = orthanc.instance_count()
    assert set(send(node.receiver.port, follow_up)) == {0}
    # First its own results (no prior in the index), then the comparison as a new version.
    wait_until(lambda: len(_compared(_reports_in_orthanc(orthanc, follow_uid, tmp_path))) == 1,
               timeout=180)
    reports = _reports_in_orthanc(orthanc, follow_uid, tmp_path)
    (compared,) = _compared(reports)
    (first,) = [r for r in reports if r is not compared and "PertinentOtherEvidenceSequence"
                not in r]
    (predecessor,) = compared.PredecessorDocumentsSequence
    assert (predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID == first.SOPInstanceUID)
    assert compared.PertinentOtherEvidenceSequence[0].StudyInstanceUID == base_uid
    wait_until(lambda: _analysed_and_delivered(node, follow_uid), timeout=120)
    _assert_statuses(_comparison(node, follow_uid), PriorSource.PACS)
    # Only the report came back: the baseline's images were not retrieved into the node.
    assert node.index.studies.study(base_uid) is None
    assert orthanc.instance_count() >= images_before
    events = [e["detail"] for e in node.index.studies.events(follow_uid)]
    assert any("found in the PACS" in detail for detail in events)


def test_a_baseline_arriving_after_its_follow_up_has_the_follow_up_compared_again(
        node_factory: Any, orthanc_factory: Any, pair: tuple[list[Dataset], list[Dataset]],
        tmp_path: Path) -> None:
    node, orthanc = node_with_orthanc(node_factory, orthanc_factory)
    baseline, follow_up = pair
    base_uid, follow_uid = _uids(pair)
    _send_and_wait(node, follow_up)
    assert _comparison(node, follow_uid) is None
    assert set(send(node.receiver.port, baseline)) == {0}
    wait_until(lambda: _comparison(node, follow_uid) is not None
               and _analysed_and_delivered(node, follow_uid), timeout=180)
    _assert_statuses(_comparison(node, follow_uid), PriorSource.INDEX)
    assert _comparison(node, follow_uid)["prior"]["study_instance_uid"] == base_uid
    wait_until(lambda: len(_compared(_reports_in_orthanc(orthanc, follow_uid, tmp_path))) == 1,
               timeout=60)


def test_a_baseline_in_orthanc_without_a_report_is_fetched_and_analysed_then_compared(
        node_factory: Any, orthanc_factory: Any, pair: tuple[list[Dataset], list[Dataset]],
        tmp_path: Path) -> None:
    """The baseline reached the PACS but never the node (no marrownode report in it): the
    node retrieves its images, analyses them, and compares the follow-up with it."""
    from marrownode.synthetic.studies import write_datasets

    node, orthanc = node_with_orthanc(node_factory, orthanc_factory)
    baseline, follow_up = pair
    base_uid, follow_uid = _uids(pair)
    write_datasets(baseline, tmp_path / "baseline")
    for path in sorted((tmp_path / "baseline").rglob("*.dcm")):
        orthanc.upload(path)
    assert set(send(node.receiver.port, follow_up)) == {0}
    wait_until(lambda: _analysed_and_delivered(node, base_uid), timeout=180)
    assert len(node.index.studies.instances(base_uid)) == len(baseline)
    wait_until(lambda: _comparison(node, follow_uid) is not None
               and _analysed_and_delivered(node, follow_uid), timeout=180)
    assert _comparison(node, follow_uid)["prior"]["study_instance_uid"] == base_uid
    _assert_statuses(_comparison(node, follow_uid), PriorSource.INDEX)
