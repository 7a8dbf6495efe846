"""Files of one study in, result files and a report out. `process` and `serve` both call
analyse_study(), so what the tests prove offline holds on the network."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from marrownode import ALGORITHM_VERSION, __version__
from marrownode.companion_series import join_companions
from marrownode.config import Settings
from marrownode.dixon.companions import Companions
from marrownode.dixon.companions import plan as plan_companions
from marrownode.dixon.header import summarise
from marrownode.dixon.roles import classify, frames_from_header
from marrownode.dixon.sets import DixonSet, assemble
from marrownode.dixon.volume import PixelCache, SetVolumes, load_set
from marrownode.priors.compare import compare
from marrownode.priors.record import moment_of, prior_among
from marrownode.quant.analysis import QuantParameters, QuantResult, analyse_set
from marrownode.quant.comparison import ComparisonRules
from marrownode.quant.foci import FocusParameters
from marrownode.quant.localisation import SpineParameters
from marrownode.report import SetReport
from marrownode.report_shape import (
    OutputEntry,
    PriorShape,
    ProcessShape,
    RequestShape,
    SetShape,
    StudyShape,
    UnreadableFile,
)
from marrownode.requests.measure import (
    PendingRequest,
    SetMaps,
    find_requests,
    measure_on_set,
    request_records,
    segment_localisation,
)
from marrownode.results.answer import write_answer
from marrownode.results.build import build_results, early_maps
from marrownode.results.failure_note import write_failure_note
from marrownode.results.set_series import EarlyMaps
from marrownode.states import SetState
from marrownode.store.spool import disk_full
from marrownode.uids import derived_uid
from marrownode.vocabulary import Flag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceInstance:
    """A stored instance: where it is and what its header says (from the index or a scan)."""

    path: Path
    header: dict[str, Any]


def quant_parameters(settings: Settings) -> QuantParameters:
    """The analysis parameters of [analysis]."""
    analysis = settings.analysis
    return QuantParameters(
        thresholds=tuple((t.field_strength_t, t.signal_loss_percent) for t in analysis.thresholds),
        field_strength_tolerance_t=analysis.field_strength_tolerance_t,
        foci=FocusParameters(
            min_volume_mm3=analysis.min_focus_volume_mm3,
            min_diameter_mm=analysis.min_focus_diameter_mm,
            in_phase_first_margin_percent=analysis.in_phase_first_margin_percent,
        ),
        spine=SpineParameters(
            mixed_tissue_min_loss_percent=analysis.mixed_tissue_min_loss_percent),
    )


def comparison_rules(settings: Settings) -> ComparisonRules:
    """The follow-up rule of [priors]."""
    priors = settings.priors
    return ComparisonRules(grown_percent=priors.grown_percent,
                           grown_min_mm=priors.grown_min_mm,
                           match_distance_mm=priors.match_distance_mm)


def analyse_study(
    instances: Sequence[SourceInstance],
    settings: Settings,
    out_dir: Path | None,
    on_outputs: Callable[[list[OutputEntry]], None] | None = None,
    superseded: Mapping[str, list[OutputEntry]] | None = None,
    on_progress: Callable[[str], None] = lambda stage: None,
    prior: PriorShape | None = None,
) -> StudyShape:
    """Classify, pair, quantify (and, where out_dir is given, write results) for one study.

    on_outputs receives each result series' report entries as soon as its files are written
    (the node delivers them while the rest is encoded); the report lists them all as well.
    superseded: per set key, the earlier reports (SR entries) the new ones supersede.
    on_progress hears each stage as it begins (the node's heartbeat of a running analysis).
    prior: the patient's earlier study, which every set is compared with (docs/follow-up.md)."""
    started = time.perf_counter()
    study_uid = instances[0].header.get("study_uid", "") if instances else ""
    frames = [frame for item in instances for frame in frames_from_header(item.header)]
    assembly = assemble(classify(frames))
    joining = plan_companions(assembly.sets, frames)  # post-contrast twins join their sets
    joined = {uid for companions in joining.companions.values()
              for uid in companions.series_uids()}
    paths = {item.header["sop_instance_uid"]: item.path for item in instances}
    cache = PixelCache(paths)
    parameters = quant_parameters(settings)
    pending = find_requests([(item.path, item.header) for item in instances], settings,
                            lambda text: str(derived_uid(settings.outputs.uid_root, text)),
                            results_dir=out_dir)
    run = _StudyRun(study_uid, settings, parameters, cache, paths, pending, out_dir,
                    on_outputs, on_progress, superseded or {}, joining.companions, prior)
    set_reports = [_analyse_one_set(run, set_index, dixon_set)
                   for set_index, dixon_set in enumerate(joining.sets)]
    measured_on = run.measured_on
    requests = [_answer_or_fail(item, index, measured_on, cache, settings, out_dir, on_outputs)
                for index, item in enumerate(pending)]
    log.info("event=study_analysed study=%s sets=%d requests=%d skipped_series=%d "
             "seconds=%.2f", study_uid, len(set_reports), len(requests),
             len(assembly.skipped_series) - len(joined), time.perf_counter() - started)
    return {
        "study_instance_uid": study_uid,
        "dixon_sets": set_reports,
        "requests": requests,
        "skipped_series": [s for s in assembly.skipped_series
                           if s["series_instance_uid"] not in joined],
    }


@dataclass
class _StudyRun:
    """What every set of one study's analysis shares."""

    study_uid: str
    settings: Settings
    parameters: QuantParameters
    cache: PixelCache
    paths: dict[str, Path]
    pending: list[PendingRequest]
    out_dir: Path | None
    on_outputs: Callable[[list[OutputEntry]], None] | None
    on_progress: Callable[[str], None]
    superseded: Mapping[str, list[OutputEntry]]
    companions: Mapping[str, Companions] = field(default_factory=dict)
    prior: PriorShape | None = None
    measured_on: list[DixonSet] = field(default_factory=list)


def failure_reason(exc: BaseException) -> str:
    """An exception as a set's or request's reason: class and message, one line, no
    traceback (that goes to the log, once)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def _analyse_one_set(run: _StudyRun, set_index: int, dixon_set: DixonSet) -> SetShape:
    """One set, start to end. Whatever breaks it (a vendor's file the code does not expect,
    a result highdicom refuses) fails this set alone with the reason; a full disk is not the
    set's fault and goes up (the node waits for space). Results the set had already written
    are named incomplete by a note in the study."""
    report = SetReport.of(dixon_set)
    written: list[OutputEntry] = []

    def emit(entries: list[OutputEntry]) -> None:
        written.extend(entries)
        if run.on_outputs is not None:
            run.on_outputs(entries)

    try:
        _run_set(run, set_index, dixon_set, report, emit)
    except Exception as exc:
        if disk_full(exc):
            raise
        log.exception("event=set_failed study=%s set=%s", run.study_uid, dixon_set.key)
        report.failed(failure_reason(exc))
        if written and run.out_dir is not None:
            outputs = run.settings.outputs
            report.outputs = write_failure_note(
                str(run.paths[dixon_set.in_phase.first.sop_instance_uid]), report.reason,
                [str(run.out_dir / entry["path"]) for entry in written], outputs.uid_root,
                outputs.series_number_base, str(run.out_dir))
            if run.on_outputs is not None and report.outputs:
                run.on_outputs(report.outputs)
    return report.to_json()


def _run_set(run: _StudyRun, set_index: int, dixon_set: DixonSet, report: SetReport,
             emit: Callable[[list[OutputEntry]], None]) -> None:
    """Load, analyse, measure requests on, and (with an output folder) write one set."""
    run.on_progress(f"set {set_index + 1}: loading")
    volumes = load_set(dixon_set, run.cache)
    run.cache.release_pixels()
    run.on_progress(f"set {set_index + 1}: analysing")
    given = segment_localisation(run.pending, volumes.geometry, volumes.in_phase.shape,
                                 dixon_set.in_phase.first.frame_of_reference_uid)
    with early_maps(dixon_set, volumes, run.cache, run.settings, run.out_dir,
                    set_index) as maps:  # built on another core while the marrow is found
        result = analyse_set(volumes.in_phase, volumes.opposed, volumes.spacing_mm,
                             dixon_set.field_strength_t, volumes.water, volumes.fat,
                             run.parameters, geometry=volumes.geometry,
                             scanner_pdff=volumes.scanner_fat_fraction,
                             in_phase_first=Flag.IN_PHASE_FIRST in dixon_set.flags,
                             localisation=given, on_maps=maps.start)
        _after_analysis(run, set_index, dixon_set, report, emit, volumes, result, maps)


def _after_analysis(run: _StudyRun, set_index: int, dixon_set: DixonSet, report: SetReport,
                    emit: Callable[[list[OutputEntry]], None], volumes: SetVolumes,
                    result: QuantResult, maps: EarlyMaps) -> None:
    """Report, companions, comparison, requests, then (with an output folder) the results."""
    report.analysed(result, volumes.geometry, run.settings.outputs.uid_root, run.study_uid,
                    run.parameters.foci.sharp_margin)
    companion_stacks = []
    if (companions := run.companions.get(dixon_set.key)) is not None:
        run.on_progress(f"set {set_index + 1}: companion series")
        companion_stacks = join_companions(companions, volumes, result, report, run.cache)
    if run.prior is not None and report.marrow.localised:
        _compare(report, run.prior, run.settings)
    if run.pending:
        measure_on_set(run.pending, SetMaps(
            dixon_set.key, volumes.geometry, volumes.in_phase, volumes.opposed, result,
            Flag.IN_PHASE_FIRST in dixon_set.flags,
            dixon_set.in_phase.first.frame_of_reference_uid), run.settings)
        run.measured_on.append(dixon_set)
    if run.out_dir is not None:
        run.on_progress(f"set {set_index + 1}: writing results")
        report.outputs = build_results(
            dixon_set, volumes, result, run.cache, run.settings, run.out_dir, report,
            set_index, emit, superseded=run.superseded.get(dixon_set.key, []),
            evidence_stacks=companion_stacks, early=maps)


def _compare(report: SetReport, prior: PriorShape, settings: Settings) -> None:
    """Compare with the prior; a prior that cannot be compared (a damaged report read back
    from a PACS) costs the comparison, never the set."""
    try:
        compare(report, prior, comparison_rules(settings))
    except (ValueError, KeyError, TypeError, IndexError, np.linalg.LinAlgError) as exc:
        report.comparison = None
        log.warning("event=comparison_skipped set=%s error=%s", report.key,
                    type(exc).__name__)


def _answer_or_fail(item: PendingRequest, index: int, measured_on: list[DixonSet],
                    cache: PixelCache, settings: Settings, out_dir: Path | None,
                    on_outputs: Callable[[list[OutputEntry]], None] | None) -> RequestShape:
    """A request's answer, or its failure with the reason (the other requests go on)."""
    try:
        return _answer(item, index, measured_on, cache, settings, out_dir, on_outputs)
    except Exception as exc:
        if disk_full(exc):
            raise
        log.exception("event=request_failed request=%s", item.request.sop_instance_uid)
        return {"sop_instance_uid": item.request.sop_instance_uid, "kind": item.request.kind,
                "measurements": [], "outputs": [], "state": SetState.FAILED,
                "reason": failure_reason(exc)}


def _answer(item: PendingRequest, index: int, measured_on: list[DixonSet], cache: PixelCache,
            settings: Settings, out_dir: Path | None,
            on_outputs: Callable[[list[OutputEntry]], None] | None) -> RequestShape:
    """A request's entry in report.json, and its answer SR when results are written."""
    records = request_records(item, bool(measured_on))
    entry: RequestShape = {
        "sop_instance_uid": item.request.sop_instance_uid, "kind": item.request.kind,
        "measurements": [{k: v for k, v in r.items() if k != "drawn"} for r in records],
        "outputs": [],
    }
    if out_dir is not None:
        evidence = _evidence(records, measured_on, cache, out_dir)
        entry["outputs"] = write_answer(item.dataset, records, evidence, settings, out_dir,
                                        index, on_outputs)
    return entry


def _evidence(records: list[dict[str, Any]], measured_on: list[DixonSet], cache: PixelCache,
              out_dir: Path) -> list[Dataset]:
    """The images the answer names: those drawn on (received, or our own maps in out_dir) and
    those measured on. A region drawn on an image the node cannot produce is answered without
    its outline (an SR may not reference what it cannot name as evidence)."""
    wanted = {r["drawn"]["sop_instance_uid"] for r in records if "drawn" in r} | {
        dixon_set.in_phase.first.sop_instance_uid for dixon_set in measured_on}
    found: dict[str, Dataset] = {}
    for sop_uid in sorted(wanted):
        try:
            found[sop_uid] = cache.dataset(sop_uid)
        except (KeyError, OSError):
            continue
    missing = wanted - set(found)
    if missing:
        for path in out_dir.rglob("*.dcm"):
            if path.stem in missing:
                found[path.stem] = dcmread(path, stop_before_pixels=True)
    for record in records:
        if "drawn" in record and record["drawn"]["sop_instance_uid"] not in found:
            del record["drawn"]
    return list(found.values())


# --- offline `process` ----------------------------------------------------------------------------


def discover(paths: Iterable[Path]) -> tuple[dict[str, list[SourceInstance]], list[UnreadableFile]]:
    """Every DICOM file under paths, grouped by study; unreadable files with their reason."""
    studies: dict[str, list[SourceInstance]] = defaultdict(list)
    unreadable: list[UnreadableFile] = []
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    seen: set[str] = set()
    for file in files:
        if file.name == "DICOMDIR":
            continue
        try:
            dataset = dcmread(file, stop_before_pixels=True)
            header = summarise(dataset)
        except (InvalidDicomError, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            unreadable.append({"path": str(file), "reason": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        sop_uid = header["sop_instance_uid"]
        if not header["study_uid"] or not sop_uid or sop_uid in seen:
            continue
        seen.add(sop_uid)
        studies[header["study_uid"]].append(SourceInstance(file, header))
    return studies, unreadable


def process_paths(paths: Sequence[Path], out_dir: Path, settings: Settings) -> ProcessShape:
    """`marrownode process`: analyse every study under paths, write results and report.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    studies, unreadable = discover(paths)
    analysed: dict[str, StudyShape] = {}
    # Oldest first: a study's prior among the inputs is analysed before it is needed.
    for study_uid, instances in sorted(studies.items(),
                                       key=lambda item: moment_of(item[1][0].header).key):
        prior = prior_among(instances[0].header, [
            (studies[uid][0].header, done) for uid, done in analysed.items()],
            settings.priors.look_back_years) if settings.priors.enabled else None
        analysed[study_uid] = _study_or_fail(study_uid, instances, settings, out_dir, prior)
    report: ProcessShape = {
        "marrownode_version": __version__,
        "algorithm_version": ALGORITHM_VERSION,
        "studies": [analysed[study_uid] for study_uid in sorted(analysed)],
        "unreadable_files": unreadable,
    }
    write_json_atomic(out_dir / "report.json", report)
    return report


def _study_or_fail(study_uid: str, instances: Sequence[SourceInstance], settings: Settings,
                   out_dir: Path, prior: PriorShape | None = None) -> StudyShape:
    """One study of `process`: its report, or its failure with the reason (the other studies
    go on; `process` exits 1 once everything is written)."""
    try:
        return analyse_study(instances, settings, out_dir, prior=prior)
    except Exception as exc:
        log.exception("event=study_failed study=%s", study_uid)
        return {"study_instance_uid": study_uid, "dixon_sets": [], "requests": [],
                "skipped_series": [], "state": SetState.FAILED,
                "reason": failure_reason(exc)}


def failures(report: ProcessShape) -> list[str]:
    """Every study, set and request of a `process` report that failed, in words."""
    found = []
    for study in report["studies"]:
        uid = study["study_instance_uid"]
        if study.get("state") == SetState.FAILED:
            found.append(f"study {uid}: {study.get('reason', '')}")
        found += [f"study {uid} set {s['key']}: {s.get('reason', '')}"
                  for s in study["dixon_sets"] if s["state"] == SetState.FAILED]
        found += [f"study {uid} request {r['sop_instance_uid']}: {r.get('reason', '')}"
                  for r in study["requests"] if r.get("state") == SetState.FAILED]
    return found


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file and a rename, so a reader never sees half of it."""
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temp, path)
