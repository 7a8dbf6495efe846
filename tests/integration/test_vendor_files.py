"""Real vendor files never break the analysis: Enhanced MR with its functional groups shared
or per frame as each vendor writes them (and legacy-converted), frames of one stack that
disagree on their grid left out with the reason, and one broken set or study failing alone
while `process` writes everything else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from marrownode.config import Settings
from marrownode.pipeline import failures, process_paths
from marrownode.synthetic.enhanced import LAYOUTS
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets
from tests.conftest import RESULTS_PER_STUDY, require_binary


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([require_binary("/usr/bin/dciodvfy"), str(path)],
                            capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_enhanced_mr_in_every_vendor_layout_is_analysed_and_its_results_valid(
        tmp_path, layout: str) -> None:
    """Pixel Measures and Plane Orientation per frame (Philips), every group per frame
    (Siemens XA), all shared, and Legacy Converted Enhanced MR: one analysed set with every
    result kind, each valid per dciodvfy. Per-frame Pixel Measures crashed the result
    building (highdicom read them from the shared item only)."""
    datasets = build_study(StudyOptions(style="philips_enhanced", study_key=f"layout-{layout}",
                                        enhanced_layout=layout))
    (source,) = datasets
    per_frame = source.PerFrameFunctionalGroupsSequence[0]
    assert ("PixelMeasuresSequence" in per_frame) == ("PixelMeasuresSequence" in
                                                       LAYOUTS[layout])
    write_datasets(datasets, tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    (dixon_set,) = report["studies"][0]["dixon_sets"]
    assert dixon_set["state"] == "analysed", dixon_set.get("reason")
    assert dixon_set["marrow"]["localised"] and dixon_set["water"] is not None
    kinds: dict[str, str] = {}
    for entry in dixon_set["outputs"]:
        kinds.setdefault(entry["kind"], entry["path"])
    assert set(kinds) == {"summary", "parametric_map", "derived_mr", "overlay", "segmentation",
                          "sr"}
    for kind, path in kinds.items():
        assert _dciodvfy_errors(tmp_path / "out" / path) == [], kind
    assert failures(report) == []


def test_frames_of_one_stack_with_another_pixel_spacing_are_left_out_with_the_reason(
        tmp_path) -> None:
    """Per-frame Pixel Measures that disagree inside the in-phase stack: that stack cannot
    be one volume, so it is left out with the reason (no crash, no set built from it)."""
    (source,) = build_study(StudyOptions(style="philips_enhanced", study_key="spacing",
                                         enhanced_layout="philips"))
    frames = source.PerFrameFunctionalGroupsSequence
    in_phase = [item for item in frames
                if item.MRImageFrameTypeSequence[0].FrameType[3] == "IN_PHASE"]
    for item in in_phase[:3]:
        item.PixelMeasuresSequence[0].PixelSpacing = [1.9, 1.9]
    write_datasets([source], tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    study = report["studies"][0]
    assert study["dixon_sets"] == []
    (skipped,) = study["skipped_series"]
    assert "in_phase frames of one stack differ in pixel spacing or orientation" in (
        skipped["reason"])


def test_process_writes_everything_else_when_one_study_is_broken(tmp_path) -> None:
    """Two good studies and one whose in-phase pixel stream is cut short: the two have all
    their results, the broken set is failed with its reason in report.json, the command
    says which and exits 1 after writing everything."""
    for key in ("good-1", "good-2", "broken"):
        write_datasets(build_study(StudyOptions(style="siemens", study_key=key,
                                                patient_id=key)), tmp_path / "in" / key)
    victim = sorted((tmp_path / "in" / "broken").rglob("*.dcm"))
    cut = next(p for p in victim if dcmread(p, stop_before_pixels=True)
               .SeriesDescription.endswith("_in"))
    cut.write_bytes(cut.read_bytes()[:-3000])  # the pixel stream ends early
    result = subprocess.run([sys.executable, "-m", "marrownode", "process",
                             str(tmp_path / "in"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    states = sorted(s["dixon_sets"][0]["state"] for s in report["studies"])
    assert states == ["analysed", "analysed", "failed"]
    (failed,) = [s["dixon_sets"][0] for s in report["studies"]
                 if s["dixon_sets"][0]["state"] == "failed"]
    assert failed["reason"] and "Traceback" not in failed["reason"]
    assert failed["outputs"] == []  # it failed before writing anything
    for study in report["studies"]:
        dixon_set = study["dixon_sets"][0]
        if dixon_set["state"] == "analysed":
            assert len(dixon_set["outputs"]) == RESULTS_PER_STUDY
            assert all((tmp_path / "out" / e["path"]).is_file() for e in dixon_set["outputs"])
    failed_lines = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed_lines) == 1 and failed["key"] in failed_lines[0]
    assert "3 studies, 3 Dixon sets" in result.stdout


def test_a_set_that_fails_while_writing_names_its_partial_results(tmp_path,
                                                                   monkeypatch) -> None:
    """A set whose result building breaks half-way (here the SR builder raises, after the
    maps, overlay and SEG were written): the set is failed with the reason, and a note in
    the study names the series already written as incomplete (valid per dciodvfy)."""
    from marrownode.results import build

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("the SR builder refused this set")

    monkeypatch.setattr(build, "build_sr", refuse)
    write_datasets(build_study(StudyOptions(style="siemens", study_key="half")),
                   tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    (dixon_set,) = report["studies"][0]["dixon_sets"]
    assert dixon_set["state"] == "failed"
    assert dixon_set["reason"] == "ValueError: the SR builder refused this set"
    (note_entry,) = dixon_set["outputs"]
    assert note_entry["kind"] == "failure_note"
    note = dcmread(tmp_path / "out" / note_entry["path"])
    texts = [item.TextValue for item in note.ContentSequence]
    assert "SR builder refused" in texts[0]
    written = {p.parent.name for p in (tmp_path / "out").rglob("*.dcm")} - {"failure-note"}
    assert len(texts) - 1 == len(written) >= 4  # one line per incomplete series
    assert _dciodvfy_errors(tmp_path / "out" / note_entry["path"]) == []
    assert failures(report) == [f"study {report['studies'][0]['study_instance_uid']} "
                                f"set {dixon_set['key']}: {dixon_set['reason']}"]
