"""Issue 27: a follow-up compared with the patient's prior.

A baseline and a follow-up of one patient built from the lumbar anatomy (synthetic/
follow_up.py): five lesions, one per status, the follow-up in another frame of reference with
the patient shifted and tilted on the table. The rules themselves (alignment, the growth rule,
which study is the prior) are checked on numbers whose answer is known."""

from __future__ import annotations

import copy
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from marrownode.config import ConfigError, Settings, settings_from_mapping
from marrownode.pipeline import process_paths
from marrownode.priors.record import StudyMoment, choose_prior, prior_among, prior_from_report
from marrownode.priors.sr_reader import prior_from_srs
from marrownode.quant.comparison import Body, ComparisonRules, Lesion, align, change, match_foci
from marrownode.report_shape import PriorShape, SetShape, StudyShape
from marrownode.synthetic.follow_up import LESIONS, follow_up_pair
from marrownode.synthetic.studies import write_datasets
from marrownode.vocabulary import ChangeStatus, Flag, PriorSource

RULES = ComparisonRules()


@pytest.fixture(scope="module")
def pair() -> tuple[list[Dataset], list[Dataset]]:
    return follow_up_pair()


@pytest.fixture(scope="module")
def processed(pair: tuple[list[Dataset], list[Dataset]],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, StudyShape]]:
    """Both studies given to one `process` run."""
    root = tmp_path_factory.mktemp("follow-up")
    write_datasets(pair[0], root / "in" / "baseline")
    write_datasets(pair[1], root / "in" / "follow-up")
    report = process_paths([root / "in"], root / "out", Settings())
    return root / "out", {s["study_instance_uid"]: s for s in report["studies"]}


def _set(study: StudyShape) -> SetShape:
    (dixon_set,) = study["dixon_sets"]
    return dixon_set


def _sr_path(out: Path, dixon_set: SetShape) -> str:
    (entry,) = [o for o in dixon_set["outputs"] if o["kind"] == "sr"]
    return str(out / entry["path"])


def _sr(out: Path, dixon_set: SetShape) -> Dataset:
    return dcmread(_sr_path(out, dixon_set))


def test_each_focus_gets_the_status_of_its_truth(
        pair: tuple[list[Dataset], list[Dataset]],
        processed: tuple[Path, dict[str, StudyShape]]) -> None:
    _, studies = processed
    baseline = studies[str(pair[0][0].StudyInstanceUID)]
    follow_up = studies[str(pair[1][0].StudyInstanceUID)]
    assert _set(baseline)["comparison"] is None  # nothing earlier
    comparison = _set(follow_up)["comparison"]
    assert comparison is not None
    assert comparison["prior"] == {"study_instance_uid": baseline["study_instance_uid"],
                                   "study_date": "20260105", "source": PriorSource.INPUTS,
                                   "report": comparison["prior"]["report"]}
    # Another frame of reference, shifted and tilted: carried over by the named bodies.
    assert comparison["alignment"]["method"] == "rigid by levels"
    assert comparison["alignment"]["residual_mm"] < 2.0
    statuses = {line["level"]: line["status"] for line in comparison["foci"]}
    assert statuses == {lesion.level: lesion.status for lesion in LESIONS}
    lines = {line["level"]: line for line in comparison["foci"]}
    assert lines["L2"]["prior_volume_mm3"] is None and lines["L5"]["volume_mm3"] is None
    grown = lines["L1"]
    assert grown["diameter_mm"] > grown["prior_diameter_mm"] * 1.2
    assert set(_set(follow_up)["flags"]) >= {Flag.NEW_FOCUS, Flag.FOCUS_GROWN}
    levels = {v["level"]: v for v in comparison["vertebrae"]}
    assert set(levels) >= {"L1", "L2", "L3", "L4", "L5", "S1"}
    assert levels["L5"]["prior_signal_loss_percent_median"] == pytest.approx(
        levels["L5"]["signal_loss_percent_median"], abs=5)


def test_matched_foci_keep_the_prior_tracking_uid_and_new_ones_get_their_own(
        pair: tuple[list[Dataset], list[Dataset]],
        processed: tuple[Path, dict[str, StudyShape]]) -> None:
    _, studies = processed
    before = {f["level"]: f["tracking_uid"]
              for f in _set(studies[str(pair[0][0].StudyInstanceUID)])["foci"]}
    after = {f["level"]: f["tracking_uid"]
             for f in _set(studies[str(pair[1][0].StudyInstanceUID)])["foci"]}
    for level in ("L1", "L3", "L4"):  # grown, stable, smaller: the same lesion
        assert after[level] == before[level]
    assert after["L2"] not in before.values()  # new


def test_the_follow_up_sr_names_the_prior_and_codes_each_change(
        pair: tuple[list[Dataset], list[Dataset]],
        processed: tuple[Path, dict[str, StudyShape]], tmp_path: Path) -> None:
    out, studies = processed
    baseline_sr = _sr(out, _set(studies[str(pair[0][0].StudyInstanceUID)]))
    follow_up_set = _set(studies[str(pair[1][0].StudyInstanceUID)])
    sr = _sr(out, follow_up_set)
    (other,) = sr.PertinentOtherEvidenceSequence
    assert other.StudyInstanceUID == baseline_sr.StudyInstanceUID
    assert (other.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            == baseline_sr.SOPInstanceUID)
    dump = subprocess.run(["dsrdump", _sr_path(out, follow_up_set)],
                          capture_output=True, text=True, check=True).stdout
    assert 'Time Point")="follow-up of 20260105"' in dump
    for meaning in ("Grown since prior study", "New since prior study",
                    "Stable since prior study", "Smaller since prior study",
                    "Resolved since prior study"):
        assert meaning in dump
    assert "Time Point" not in subprocess.run(
        ["dsrdump", _sr_path(out, _set(studies[str(pair[0][0].StudyInstanceUID)]))],
        capture_output=True, text=True, check=True).stdout
    verify = subprocess.run(["dciodvfy", _sr_path(out, follow_up_set)],
                            capture_output=True, text=True)
    assert "Error" not in verify.stdout + verify.stderr
    # Alone, the follow-up is other content: the compared SR and page have other UIDs.
    write_datasets(pair[1], tmp_path / "in")
    alone = _set(process_paths([tmp_path / "in"], tmp_path / "out",
                               Settings())["studies"][0])
    assert alone["comparison"] is None

    def uids(dixon_set: SetShape, kind: str) -> set[str]:
        return {o["sop_instance_uid"] for o in dixon_set["outputs"] if o["kind"] == kind}

    for kind in ("sr", "summary", "overlay"):
        assert not uids(alone, kind) & uids(follow_up_set, kind)
    assert uids(alone, "parametric_map") == uids(follow_up_set, "parametric_map")


def test_the_prior_read_back_from_its_sr_is_the_prior_of_its_report(
        pair: tuple[list[Dataset], list[Dataset]],
        processed: tuple[Path, dict[str, StudyShape]]) -> None:
    out, studies = processed
    baseline = studies[str(pair[0][0].StudyInstanceUID)]
    from_report = prior_from_report(baseline, StudyMoment("20260105", "093000"),
                                    PriorSource.INDEX)
    from_sr = prior_from_srs([_sr(out, _set(baseline))], PriorSource.PACS)
    assert from_report is not None and from_sr is not None
    assert from_sr["study_date"] == "20260105" and from_sr["report"] == from_report["report"]
    (a,), (b,) = from_report["sets"], from_sr["sets"]
    assert b["pattern"] == a["pattern"] and b["orientation"] == a["orientation"]
    assert [v["name"] for v in b["vertebrae"]] == [v["name"] for v in a["vertebrae"]]
    for va, vb in zip(a["vertebrae"], b["vertebrae"], strict=True):
        assert vb["centroid_patient_mm"] == pytest.approx(va["centroid_patient_mm"], abs=0.05)
    assert [(f["site"], f["volume_mm3"], f["tracking_uid"]) for f in b["foci"]] == [
        (f["site"], f["volume_mm3"], f["tracking_uid"]) for f in a["foci"]]


def _header(patient_id: str, issuer: str, date: str, time: str = "100000") -> dict[str, Any]:
    return {"patient_id": patient_id, "issuer_of_patient_id": issuer, "study_date": date,
            "study_time": time}


def _report(uid: str, processed: tuple[Path, dict[str, StudyShape]]) -> StudyShape:
    study = copy.deepcopy(next(iter(processed[1].values())))
    study["study_instance_uid"] = uid
    return study


def test_only_the_same_patient_with_the_same_issuer_is_a_prior(
        processed: tuple[Path, dict[str, StudyShape]]) -> None:
    current = _header("P1", "HOSP-A", "20260706")
    candidates = [(_header("P2", "HOSP-A", "20260101"), _report("other-patient", processed)),
                  (_header("P1", "HOSP-B", "20260102"), _report("other-issuer", processed)),
                  (_header("P1", "", "20260103"), _report("no-issuer", processed))]
    assert prior_among(current, candidates, 5) is None
    candidates.append((_header("P1", "HOSP-A", "20260104"), _report("same", processed)))
    prior = prior_among(current, candidates, 5)
    assert prior is not None and prior["study_instance_uid"] == "same"
    assert prior_among({**current, "patient_id": ""}, candidates, 5) is None


def test_a_different_issuer_is_not_compared_end_to_end(
        pair: tuple[list[Dataset], list[Dataset]], tmp_path: Path) -> None:
    baseline = copy.deepcopy(pair[0])
    for dataset in baseline:
        dataset.IssuerOfPatientID = "HOSPITAL-B"  # the same number, another hospital's
    write_datasets(baseline, tmp_path / "in" / "baseline")
    write_datasets(pair[1], tmp_path / "in" / "follow-up")
    report = process_paths([tmp_path / "in"], tmp_path / "out", Settings())
    assert all(_set(study)["comparison"] is None for study in report["studies"])


def _prior(uid: str) -> PriorShape:
    return {"study_instance_uid": uid, "study_date": "", "study_time": "",
            "source": PriorSource.INDEX, "sets": []}


def test_the_prior_is_the_most_recent_earlier_study_within_the_look_back() -> None:
    current = StudyMoment("20260706", "093000")
    candidates = [(StudyMoment("20200101", "080000"), _prior("too-old")),
                  (StudyMoment("20250101", "080000"), _prior("older")),
                  (StudyMoment("20260706", "080000"), _prior("same-morning")),
                  (StudyMoment("20260706", "120000"), _prior("same-afternoon")),
                  (StudyMoment("20270101", "080000"), _prior("later")),
                  (StudyMoment("", ""), _prior("undated"))]
    chosen = choose_prior(current, candidates, 5)
    assert chosen is not None and chosen["study_instance_uid"] == "same-morning"
    assert choose_prior(current, candidates[:1], 5) is None  # six years back
    chosen = choose_prior(current, candidates[:1], 10)
    assert chosen is not None and chosen["study_instance_uid"] == "too-old"


def _column(names: list[str]) -> list[tuple[str, np.ndarray]]:
    """Body centroids along a lordotic arc (mm), 36 mm apart, cranial first."""
    radius, step = 240.0, 36.0
    points = []
    for index, name in enumerate(names):
        angle = (index * step - 110.0) / radius
        points.append((name, np.array([0.0, 40.0 - radius * (1 - math.cos(angle)),
                                       100.0 - radius * math.sin(angle) - 100.0])))
    return points


def _moved(point: np.ndarray, degrees: float, shift: np.ndarray) -> np.ndarray:
    angle = math.radians(degrees)
    rotation = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)],
                         [0, math.sin(angle), math.cos(angle)]])
    return rotation @ point + shift


def test_the_alignment_carries_a_prior_point_onto_the_same_anatomy() -> None:
    shift = np.array([5.0, -12.0, 30.0])
    prior = _column(["L1", "L2", "L3", "L4", "L5", "S1"])
    current = [Body(name, tuple(_moved(p, 7.0, shift))) for name, p in prior]  # type: ignore[arg-type]
    alignment = align([Body(n, tuple(p)) for n, p in prior], current)  # type: ignore[arg-type]
    assert alignment.method == "rigid by levels" and alignment.residual_mm < 0.1
    inside = prior[2][1] + np.array([3.0, 8.0, -5.0])  # a focus in L3
    assert alignment.carry(inside) == pytest.approx(_moved(inside, 7.0, shift), abs=0.5)


def test_unnamed_levels_are_paired_by_the_order_that_fits() -> None:
    """The prior named from the sacrum, the follow-up without it (V-numbers), starting one
    body lower: the bodies pair at the offset that fits, and foci match through it."""
    named = _column(["T12", "L1", "L2", "L3", "L4", "L5", "S1"])
    shift = np.array([0.0, 8.0, -20.0])
    current = [Body(f"V{i}", tuple(_moved(p, -4.0, shift)))  # type: ignore[arg-type]
               for i, (_, p) in enumerate(named[1:6], start=1)]
    alignment = align([Body(n, tuple(p)) for n, p in named], current)  # type: ignore[arg-type]
    assert alignment.method == "rigid by order"
    assert alignment.pairs[0] == ("L1", "V1") and alignment.pairs[-1] == ("L5", "V5")
    focus = named[3][1] + np.array([0.0, 4.0, 2.0])  # in L2
    before = [Lesion("L2", tuple(focus), 500.0)]  # type: ignore[arg-type]
    after = [Lesion("V2", tuple(_moved(focus, -4.0, shift)), 1500.0)]  # type: ignore[arg-type]
    (match,) = match_foci(before, after, alignment, RULES)
    assert match.status is ChangeStatus.GROWN


@pytest.mark.parametrize(("before_mm", "after_mm", "status"), [
    (10.0, 12.5, ChangeStatus.STABLE),  # 25 % but 2.5 mm: under the 3 mm floor
    (15.0, 18.1, ChangeStatus.GROWN),  # 20.7 % and 3.1 mm
    (15.0, 17.9, ChangeStatus.STABLE),  # 19 %
    (20.0, 15.9, ChangeStatus.SMALLER),
    (20.0, 17.0, ChangeStatus.STABLE),
])
def test_the_growth_rule(before_mm: float, after_mm: float, status: ChangeStatus) -> None:
    def lesion(diameter: float) -> Lesion:
        return Lesion("L1", (0.0, 0.0, 0.0), math.pi * diameter ** 3 / 6)

    assert change(lesion(before_mm), lesion(after_mm), RULES) is status


def test_priors_query_must_name_a_destination() -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping({"priors": {"query": "archive"}, "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 11112}]})
    assert "priors.query" in str(raised.value) and "pacs" in str(raised.value)


def test_a_tilted_patient_keeps_every_body_and_each_lesion_its_level() -> None:
    """The follow-up as acquired (tilted 5 degrees, shifted): L1, carried by the lordosis and
    the tilt more than 20 mm off the straight axis through the other bodies and holding a
    15 mm metastasis, is still found, so the levels (from the sacrum) and each lesion's level
    are right."""
    from marrownode.config import Settings as Defaults
    from marrownode.pipeline import quant_parameters
    from marrownode.quant.analysis import analyse_set
    from marrownode.synthetic.follow_up import tracked_phantom

    phantom = tracked_phantom("follow_up", (4.0, 12.0, -18.0), -5.0, supersample=1)
    echoes = phantom.echoes(snr=None, seed=0)
    result = analyse_set(echoes["in_phase"], echoes["opposed_phase"],
                         (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm), 1.5,
                         echoes["water"], echoes["fat"], quant_parameters(Defaults()))
    assert result.localisation.levels == ["L1", "L2", "L3", "L4", "L5", "S1", "S2"]
    found = {result.localisation.levels[int(np.bincount(
        result.localisation.bodies[f.mask]).argmax()) - 1] for f in result.foci}
    assert found == {lesion.level for lesion in LESIONS if lesion.follow_up_radius_mm}


def test_a_focus_pairs_by_position_when_its_body_is_named_otherwise() -> None:
    """Aligned, the same place is the same focus even when the two studies name its body
    differently (a focus against an endplate, a body the localiser merged): the site is
    preferred, not required."""
    bodies = [Body(n, tuple(p)) for n, p in _column(["L1", "L2", "L3", "L4"])]  # type: ignore[arg-type]
    alignment = align(bodies, bodies)
    at = tuple(_column(["L1"])[0][1] + np.array([0.0, 2.0, -12.0]))
    before = [Lesion("L1", at, 500.0)]  # type: ignore[arg-type]
    (match,) = match_foci(before, [Lesion("L2", at, 520.0)], alignment, RULES)  # type: ignore[arg-type]
    assert match.status is ChangeStatus.STABLE
    far = tuple(np.asarray(at) + np.array([0.0, 0.0, -30.0]))
    matches = match_foci(before, [Lesion("L1", far, 520.0)], alignment, RULES)  # type: ignore[arg-type]
    assert {m.status for m in matches} == {ChangeStatus.NEW, ChangeStatus.RESOLVED}


@pytest.mark.parametrize("damage", ["nan", "missing"])
def test_a_damaged_prior_costs_the_comparison_never_the_set(
        pair: tuple[list[Dataset], list[Dataset]], tmp_path: Path, damage: str) -> None:
    """A prior read back from a PACS may be damaged: the set is analysed all the same."""
    from marrownode.pipeline import analyse_study, discover

    write_datasets(pair[1], tmp_path / "in")
    (instances,) = discover([tmp_path / "in"])[0].values()
    body = {"name": "L1", "centroid_patient_mm": [math.nan, 0.0, 0.0],
            "signal_loss_percent_median": 70.0, "fat_fraction_percent_median": 60.0}
    if damage == "missing":
        del body["centroid_patient_mm"]
    prior: Any = {"study_instance_uid": "1.2.3", "study_date": "20260101", "study_time": "",
                  "source": PriorSource.PACS, "sets": [{
                      "orientation": "sagittal", "pattern": "normal",
                      "vertebrae": [body, {**body, "name": "L2"}, {**body, "name": "L3"}],
                      "foci": []}]}
    study = analyse_study(instances, Settings(), None, prior=prior)
    (dixon_set,) = study["dixon_sets"]
    assert dixon_set["state"] == "analysed" and dixon_set["comparison"] is None
    assert len(dixon_set["foci"]) == 4
