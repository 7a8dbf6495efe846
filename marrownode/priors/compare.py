"""A set of the current study against the patient's prior: which of the prior's sets it
follows, the columns aligned, each focus with its status, each shared level with the medians
then and now, and the pattern. Matched foci keep the prior's Tracking UID, so a viewer that
follows tracking identifiers links them across the two reports."""

from __future__ import annotations

from dataclasses import replace

from marrownode.quant.comparison import (
    Alignment,
    Body,
    ComparisonRules,
    Lesion,
    Match,
    align,
    match_foci,
)
from marrownode.report import FocusReport, SetReport, json_number
from marrownode.report_shape import (
    ComparedFocus,
    ComparedPrior,
    ComparedVertebra,
    ComparisonShape,
    PriorFocusShape,
    PriorSetShape,
    PriorShape,
)
from marrownode.vocabulary import ChangeStatus, Flag, Pattern


def _point(values: list[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _names(prior_set: PriorSetShape) -> set[str]:
    return {body["name"] for body in prior_set["vertebrae"]}


def follows(report: SetReport, prior: PriorShape) -> PriorSetShape | None:
    """The prior's set this one follows: the one sharing most body names, the same plane
    first (a sagittal follow-up is compared with the sagittal baseline)."""
    names = {vertebra.name for vertebra in report.vertebrae}
    if not prior["sets"]:
        return None
    return max(prior["sets"], key=lambda s: (len(_names(s) & names),
                                             s["orientation"] == report.orientation))


def compare(report: SetReport, prior: PriorShape, rules: ComparisonRules) -> None:
    """Add the comparison to an analysed set (its foci keep the prior's tracking UIDs where
    they match; flags new_focus, focus_grown, pattern_changed)."""
    prior_set = follows(report, prior)
    if prior_set is None:
        return
    alignment = align([Body(b["name"], _point(b["centroid_patient_mm"]))
                       for b in prior_set["vertebrae"]],
                      [Body(v.name, _point(v.centroid_patient_mm)) for v in report.vertebrae])
    prior_foci = prior_set["foci"]
    lesions = [Lesion(f.site, _point(f.centroid_patient_mm), f.volume_mm3 or 0.0)
               for f in report.foci]
    before = [Lesion(f["site"], _point(f["centroid_patient_mm"]), f["volume_mm3"])
              for f in prior_foci]
    matches = match_foci(before, lesions, alignment, rules)
    for match in matches:
        if match.current is not None and match.prior is not None and prior_foci[
                match.prior]["tracking_uid"]:
            report.foci[match.current] = replace(
                report.foci[match.current], tracking_uid=prior_foci[match.prior]["tracking_uid"])
    prior_pattern = Pattern(prior_set["pattern"])
    compared: ComparedPrior = {"study_instance_uid": prior["study_instance_uid"],
                               "study_date": prior["study_date"], "source": prior["source"]}
    if "report" in prior:
        compared["report"] = prior["report"]
    report.comparison = ComparisonShape(
        prior=compared,
        foci=[_line(m, report.foci, lesions, before, prior_foci, alignment) for m in matches],
        vertebrae=_levels(report, prior_set, alignment),
        alignment={"method": alignment.method, "levels": list(alignment.levels),
                   "residual_mm": json_number(alignment.residual_mm, 1)},
        pattern={"prior": prior_pattern, "current": report.pattern,
                 "changed": prior_pattern != report.pattern
                 and Pattern.NOT_ASSESSED not in (prior_pattern, report.pattern)},
        rule={"grown_percent": rules.grown_percent, "grown_min_mm": rules.grown_min_mm,
              "match_distance_mm": rules.match_distance_mm},
    )
    statuses = {m.status for m in matches}
    flags = [flag for flag, present in (
        (Flag.NEW_FOCUS, ChangeStatus.NEW in statuses),
        (Flag.FOCUS_GROWN, ChangeStatus.GROWN in statuses),
        (Flag.PATTERN_CHANGED, report.comparison["pattern"]["changed"])) if present]
    report.flags = list(dict.fromkeys(report.flags + flags))


def _line(match: Match, foci: list[FocusReport], current: list[Lesion], before: list[Lesion],
          prior_foci: list[PriorFocusShape], alignment: Alignment) -> ComparedFocus:
    """One focus's line: sizes then and now, where it is, its tracking UID."""
    focus = foci[match.current] if match.current is not None else None
    was = before[match.prior] if match.prior is not None else None
    if focus is not None:
        centroid = list(focus.centroid_patient_mm)
        level, tracking = focus.site, focus.tracking_uid
    else:
        assert was is not None and match.prior is not None
        centroid = [round(float(c), 1) for c in alignment.carry(was.centroid_mm)]
        level, tracking = was.site, prior_foci[match.prior]["tracking_uid"]
    now = current[match.current].diameter_mm if match.current is not None else None
    return {"status": match.status, "level": level, "centroid_patient_mm": centroid,
            "volume_mm3": focus.volume_mm3 if focus is not None else None,
            "prior_volume_mm3": json_number(was.volume_mm3, 1) if was is not None else None,
            "diameter_mm": json_number(now, 1),
            "prior_diameter_mm": json_number(was.diameter_mm, 1) if was is not None else None,
            "tracking_uid": tracking, "focus_index": match.current}


def _levels(report: SetReport, prior_set: PriorSetShape,
            alignment: Alignment) -> list[ComparedVertebra]:
    """Each body in both studies (paired by the alignment), with its medians then and now."""
    then = {body["name"]: body for body in prior_set["vertebrae"]}
    paired = {after: then[before] for before, after in alignment.pairs if before in then}
    return [{"level": v.name,
             "signal_loss_percent_median": v.signal_loss_percent_median,
             "prior_signal_loss_percent_median": paired[v.name]["signal_loss_percent_median"],
             "fat_fraction_percent_median": v.fat_fraction_percent_median,
             "prior_fat_fraction_percent_median": paired[v.name][
                 "fat_fraction_percent_median"]}
            for v in report.vertebrae if v.name in paired]
