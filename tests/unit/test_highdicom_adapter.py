"""highdicom's "does this IOD hold this attribute?" is answered once and kept
(results/highdicom_adapter.py): the same answers as highdicom's own walk, asked again at no
cost, and the versions it was verified on are named. highdicom's SR constructor takes a
content tree built for one report as it is instead of deep-copying it, and the report is the
same."""

from __future__ import annotations

import inspect
import os
from functools import cache
from pathlib import Path
from typing import Any

import highdicom as hd
import highdicom.sr.sop as sr_sop
from highdicom import _standard_utils
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.sr.codedict import codes
from pydicom.uid import MRImageStorage

import marrownode.results  # noqa: F401  (installs the adapter)
from marrownode.config import Settings
from marrownode.pipeline import process_paths
from marrownode.results.highdicom_adapter import sr_content_taken_as_built, verified_version
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _walk() -> object:
    """highdicom's own function, under the adapter's cache."""
    return inspect.unwrap(_standard_utils.is_attribute_in_iod)


def test_answers_are_highdicoms_and_asked_once() -> None:
    remembered = _standard_utils.is_attribute_in_iod
    original = _walk()
    assert original is not remembered
    questions = [(attribute, sop_class, exclude)
                 for attribute in ("PerFrameFunctionalGroupsSequence", "PixelData",
                                   "FloatPixelData", "BodyPartExamined", "NoSuchKeyword")
                 for sop_class in (str(MRImageStorage), PARAMETRIC_MAP, SEGMENTATION,
                                   ENHANCED_MR, SECONDARY_CAPTURE)
                 for exclude in (None, ["IconImageSequence"])]
    for attribute, sop_class, exclude in questions:
        assert remembered(attribute, sop_class, exclude) == original(  # type: ignore[operator]
            attribute, sop_class, exclude), (attribute, sop_class, exclude)
    assert any(remembered(*q) for q in questions) and not all(remembered(*q) for q in questions)
    before = remembered.cache_info()  # type: ignore[attr-defined]
    image = Dataset()
    image.SOPClassUID = MRImageStorage
    for _ in range(3):
        assert _standard_utils.is_multiframe_image(image) is False
    after = remembered.cache_info()  # type: ignore[attr-defined]
    assert after.hits >= before.hits + 2  # asked three times: at most the first is walked


def test_verified_versions_are_named() -> None:
    assert verified_version("0.28.2")
    assert not verified_version("0.29.0")
    assert not verified_version("1.0")
    assert not verified_version("dev")


@cache
def _evidence() -> Dataset:
    return build_study(StudyOptions(style="siemens", study_key="hd-adapter"))[0]


def _report_content() -> Dataset:
    """A TID 1500 report's root container, built fresh (as results/sr.py builds one)."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid="1.2.826.0.1.3680043.10.1234.1", name="marrownode"))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid="1.2.826.0.1.3680043.10.1234.2",
                                                 identifier="L1"),
        measurements=[hd.sr.Measurement(
            name=codes.SCT.Width, value=12.5, unit=codes.UCUM.Millimeter)])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.MRIUnspecifiedBodyRegion, imaging_measurements=[group])
    content: Dataset = report[0]
    return content


def _sr(content: Dataset) -> Any:
    return hd.sr.Comprehensive3DSR(
        evidence=[_evidence()], content=content,
        series_instance_uid="1.2.826.0.1.3680043.10.1234.3", series_number=9006,
        sop_instance_uid="1.2.826.0.1.3680043.10.1234.4", instance_number=1,
        manufacturer="marrownode", is_complete=True)


def _encoded(sr: Any) -> bytes:
    for keyword in ("ContentDate", "ContentTime", "InstanceCreationDate",
                    "InstanceCreationTime", "SeriesDate", "SeriesTime"):
        if keyword in sr:
            setattr(sr, keyword, "20261207" if keyword.endswith("Date") else "120000")
    for item in sr.get("ContributingEquipmentSequence", []):  # highdicom's own "made at"
        item.ContributionDateTime = "20261207120000"
    buffer = DicomBytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return bytes(buffer.getvalue())


def test_an_sr_takes_its_content_as_built_and_is_the_same_report() -> None:
    copied_from = _report_content()
    copied = _sr(copied_from)
    assert copied.content[0] is not copied_from  # highdicom's own way: a deep copy
    taken_from = _report_content()
    with sr_content_taken_as_built(taken_from):
        taken = _sr(taken_from)
        other = Dataset()
        assert sr_sop.deepcopy(other) is not other  # anything else is still copied
    assert taken.content[0] is taken_from
    assert _encoded(taken) == _encoded(copied)
    after = _report_content()  # the block is left: highdicom copies again
    assert _sr(after).content[0] is not after


def test_an_sr_content_given_as_built_is_not_converted_again(monkeypatch) -> None:
    """Built of highdicom's own content items, the tree is taken as it is: highdicom's
    conversion of every node into its content item class (0.1 s of the spine's report) does
    not run, and the report is the same."""
    from highdicom.sr.value_types import ContainerContentItem

    conversions: list[int] = []
    real = ContainerContentItem.from_dataset.__func__  # type: ignore[attr-defined]

    def counting(cls: type, dataset: Dataset, copy: bool = True) -> Any:
        conversions.append(1)
        return real(cls, dataset, copy)

    monkeypatch.setattr(ContainerContentItem, "from_dataset", classmethod(counting))
    copied = _sr(_report_content())
    assert conversions, "highdicom's own way converts the copy"
    conversions.clear()
    content = _report_content()
    with sr_content_taken_as_built(content):
        taken = _sr(content)
    assert conversions == []
    assert taken.content[0] is content
    assert _encoded(taken) == _encoded(copied)


def test_the_node_builds_its_sr_without_copying_its_content(tmp_path: Path,
                                                           monkeypatch) -> None:
    """results/sr.py gives highdicom its content as built: every report the pipeline makes
    passes through the block (the copy it saves is a third of a report's CPU)."""
    taken: list[bool] = []
    adapter_copy = sr_sop.deepcopy

    def watching(value: Any, memo: dict[int, Any] | None = None) -> Any:
        result = adapter_copy(value, memo)
        taken.append(result is value)
        return result

    monkeypatch.setattr(sr_sop, "deepcopy", watching)
    # One core: the SR is then built in this process, not in a forked helper.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    write_datasets(build_study(StudyOptions(style="siemens", study_key="hd-adapter-node")),
                   tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    kinds = [entry["kind"] for study in report["studies"] for dixon_set in study["dixon_sets"]
             for entry in dixon_set["outputs"]]
    assert "sr" in kinds
    assert taken and all(taken)


def test_content_found_by_value_type_is_highdicoms_and_the_report_the_same(
        tmp_path: Path) -> None:
    """Asked by value type alone (collect_evidence's question), find_content_items compares
    each node's ValueType as given: the same items in the same order as highdicom's walk on
    the node's own reports, and the same report built either way."""
    import highdicom.sr.utils as sr_utils

    fast = sr_utils.find_content_items
    walk = inspect.unwrap(fast)
    assert walk is not fast and getattr(fast, "by_value_type", False)
    write_datasets(build_study(StudyOptions(style="siemens", study_key="hd-adapter-find")),
                   tmp_path / "in")
    process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    (report,) = [dcmread(path) for path in (tmp_path / "out").rglob("*.dcm")
                 if path.parent.name.endswith("-sr")]
    assert report.Modality == "SR"
    asked = 0
    for value_type in ("IMAGE", "COMPOSITE", "NUM", "CODE", "CONTAINER", "TEXT", "UIDREF"):
        for recursive in (True, False):
            mine = fast(report, value_type=value_type, recursive=recursive)
            theirs = walk(report, value_type=value_type, recursive=recursive)
            assert [id(item) for item in mine] == [id(item) for item in theirs], value_type
            asked += len(mine)
    assert asked > 50  # the report holds images, numbers, codes to be found
    named = fast(report, name=codes.DCM.ImagingMeasurements, recursive=True)
    assert named == walk(report, name=codes.DCM.ImagingMeasurements, recursive=True) != []
    sr_utils.find_content_items = walk  # highdicom's own walk: the same report
    try:
        walked = _sr(_report_content())
    finally:
        sr_utils.find_content_items = fast
    assert _encoded(_sr(_report_content())) == _encoded(walked)
