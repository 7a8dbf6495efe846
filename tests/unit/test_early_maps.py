"""The map series (parametric and derived MR) are built on another core from the moment the
maps exist, while this one localises the marrow (issue 28's time to result): they must be the
files the inline build writes, be on disk before the localiser ends, and a set that fails
afterwards must leave none of them behind."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

import marrownode.quant.analysis as analysis_module
from marrownode.config import settings_from_mapping
from marrownode.pipeline import analyse_study, discover
from marrownode.report import SetReport
from marrownode.results.set_series import EarlyMaps
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets
from tests.unit.test_results import _without_creation_times

MAP_FOLDERS = ("parametric_map", "derived_mr")
two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                               reason="the maps are built beside the analysis on a second core")


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    folder = tmp_path_factory.mktemp("early") / "in"
    write_datasets(build_study(StudyOptions(style="siemens", study_key="early-maps")), folder)
    (found,) = discover([folder])[0].values()
    return found


def _map_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.dcm"))
            if p.parent.name.endswith(MAP_FOLDERS)}


@two_cores
def test_the_maps_are_on_disk_before_the_marrow_is_localised(
        instances: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    seen_while_localising: list[int] = []
    localise = analysis_module.localise

    def slow_localise(*args: Any, **kwargs: Any) -> Any:
        found = localise(*args, **kwargs)
        expected = 2 + 2 * args[0].shape[0]  # 2 parametric maps, 2 derived MR series
        deadline = time.monotonic() + 60  # a loaded machine: the helper may be slow
        while time.monotonic() < deadline and len(_map_files(out)) < expected:
            time.sleep(0.05)
        seen_while_localising.append(len(_map_files(out)))
        return found

    monkeypatch.setattr(analysis_module, "localise", slow_localise)
    report = analyse_study(instances, settings_from_mapping({}), out)
    (dixon_set,) = report["dixon_sets"]
    slices = len({e["sop_instance_uid"] for e in dixon_set["outputs"] if e["kind"] == "overlay"})
    expected = sum(e["kind"] in MAP_FOLDERS for e in dixon_set["outputs"])
    assert slices > 1 and expected == 2 + 2 * slices  # 2 parametric maps, 2 derived MR series
    assert seen_while_localising == [expected]


def test_the_maps_built_early_are_the_files_built_inline(
        instances: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_mapping({})
    early = analyse_study(instances, settings, tmp_path / "early")
    monkeypatch.setattr(EarlyMaps, "start", lambda self, *args: None)
    inline = analyse_study(instances, settings, tmp_path / "inline")
    assert early["dixon_sets"][0]["outputs"] == inline["dixon_sets"][0]["outputs"]
    files = _map_files(tmp_path / "early")
    assert len(files) > 2 and files.keys() == _map_files(tmp_path / "inline").keys()
    for name in files:  # the same data sets, but for when each run made them
        assert (_without_creation_times(tmp_path / "early" / name)[0]
                == _without_creation_times(tmp_path / "inline" / name)[0]), name


def test_a_set_failing_after_its_maps_began_leaves_none_of_them(
        instances: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: SetReport, *args: Any, **kwargs: Any) -> None:
        raise ValueError("a report that cannot be made")

    monkeypatch.setattr(SetReport, "analysed", broken)
    out = tmp_path / "out"
    report = analyse_study(instances, settings_from_mapping({}), out)
    (dixon_set,) = report["dixon_sets"]
    assert dixon_set["state"] == "failed"
    assert "a report that cannot be made" in dixon_set["reason"]
    assert _map_files(out) == {}, "maps of a failed set were left on disk"


@pytest.mark.parametrize("early", [True, False], ids=["beside", "inline"])
def test_maps_written_before_a_failure_are_handed_on_and_the_set_fails_with_its_reason(
        instances: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        early: bool) -> None:
    """Built beside or here, the map series written before one fails are handed on (the node
    sends them, the failure note names them) and the set fails with that failure's reason."""
    import marrownode.results.set_series as set_series_module

    real, calls = set_series_module.build_derived_mr_series, [0]

    def second_refused(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1  # in the helper, the helper's own count
        if calls[0] == 2:
            raise ValueError("a fat-fraction map the encoder refuses")
        return real(*args, **kwargs)

    monkeypatch.setattr(set_series_module, "build_derived_mr_series", second_refused)
    if not early:
        monkeypatch.setattr(EarlyMaps, "start", lambda self, *args: None)
    out, handed = tmp_path / "out", []
    report = analyse_study(instances, settings_from_mapping({}), out,
                           on_outputs=handed.extend)
    (dixon_set,) = report["dixon_sets"]
    assert dixon_set["state"] == "failed"
    assert "a fat-fraction map the encoder refuses" in dixon_set["reason"]
    kinds = [entry["kind"] for entry in handed]
    assert kinds[0] == "summary" and kinds.count("parametric_map") == 2
    assert 1 < kinds.count("derived_mr") == len(set(_map_files(out))) - 2  # the first series
    assert all((out / entry["path"]).is_file() for entry in handed)
