"""A Dixon set's companion series, from recognition to numbers: load the post-contrast twin
and the fat-suppressed series, put them on the set's grid by patient coordinates, measure
them against the patient's normal marrow, and say in the report what was used, what was left
out and why (docs/companions.md)."""

from __future__ import annotations

import numpy as np

from marrownode.dixon.companions import Companions
from marrownode.dixon.sets import Stack
from marrownode.dixon.volume import (
    PixelCache,
    SetVolumes,
    load_set,
    load_stack,
    slice_spacing_mm,
    stack_geometry,
)
from marrownode.quant.analysis import QuantResult
from marrownode.quant.companions import DEFAULT_RULES, CompanionRules, coverage, measure
from marrownode.quant.resample import resample_onto
from marrownode.report import SetReport
from marrownode.report_shape import CompanionSeriesShape, CompanionsShape, LeftOutShape
from marrownode.vocabulary import CompanionKind, EnhancementImage


def _series(stack: Stack, evidence: list[str], covered: float | None) -> CompanionSeriesShape:
    return {"series_instance_uid": stack.series_uid,
            "series_description": stack.first.series_description,
            "images": len(stack.frames), "evidence": evidence,
            "coverage_percent": round(100.0 * covered, 1) if covered is not None else None}


def _left_out(stack: Stack, kind: CompanionKind, reason: str) -> LeftOutShape:
    return {"series_instance_uid": stack.series_uid,
            "series_description": stack.first.series_description, "kind": kind,
            "reason": reason}


def join_companions(companions: Companions, volumes: SetVolumes, result: QuantResult,
                    report: SetReport, cache: PixelCache,
                    rules: CompanionRules = DEFAULT_RULES) -> list[Stack]:
    """Measure the set's companions into its report; the stacks used (the SR's evidence)."""
    marrow = (result.localisation.bodies > 0) if result.localisation.localised else None
    joined: CompanionsShape = {
        "post_contrast": None, "fat_suppressed": None, "normal_marrow": None,
        "left_out": [{"series_instance_uid": item.series_uid,
                      "series_description": item.description, "kind": item.kind,
                      "reason": item.reason} for item in companions.left_out]}
    pre, post, used = _post_contrast(companions, volumes, marrow, cache, rules, joined)
    fat_suppressed, stack = _fat_suppressed(companions, volumes, marrow, cache, rules, joined)
    used += [stack] if stack is not None else []
    measures = None
    if marrow is not None and (post is not None or fat_suppressed is not None):
        localisation = result.localisation
        measures = measure(localisation.bodies, [v.pattern for v in result.vertebrae],
                           list(result.focus_masks), [f.category for f in result.foci],
                           pre=pre, post=post, fat_suppressed=fat_suppressed, rules=rules)
        joined["normal_marrow"] = {
            "reference": measures.normal_reference,
            "enhancement_percent": _rounded(measures.normal_enhancement_percent),
            "fat_suppressed_signal": _rounded(measures.normal_fat_suppressed_signal)}
    report.joined(joined, measures)
    return used


def _covered(values: np.ndarray, marrow: np.ndarray | None, stack: Stack, kind: CompanionKind,
             why: str, rules: CompanionRules, joined: CompanionsShape
             ) -> tuple[bool, float | None]:
    """(usable, the share of the marrow it covers): a series covering too little to stand
    for the marrow is left out with its coverage."""
    covered = coverage(values, marrow) if marrow is not None else None
    if covered is not None and covered < rules.min_coverage:
        joined["left_out"].append(_left_out(stack, kind, (
            f"{why}covers {100 * covered:.0f} % of the localised marrow (at least "
            f"{100 * rules.min_coverage:.0f} % needed)")))
        return False, covered
    return True, covered


def _post_contrast(companions: Companions, volumes: SetVolumes, marrow: np.ndarray | None,
                   cache: PixelCache, rules: CompanionRules, joined: CompanionsShape
                   ) -> tuple[np.ndarray | None, np.ndarray | None, list[Stack]]:
    """Pre- and post-contrast images on the set's grid (water when both sides have one)."""
    twin_set = companions.post_contrast
    if twin_set is None:
        return None, None, []
    twin = load_set(twin_set, cache)
    on_water = volumes.water is not None and twin.water is not None
    stack = twin_set.water if on_water and twin_set.water else twin_set.in_phase
    native = twin.water if on_water and twin.water is not None else twin.in_phase
    post = resample_onto(native, twin.geometry, volumes.geometry, volumes.in_phase.shape)
    usable, covered = _covered(post, marrow, stack, CompanionKind.POST_CONTRAST, "", rules,
                               joined)
    if not usable:
        return None, None, []
    joined["post_contrast"] = {
        **_series(stack, companions.post_contrast_evidence, covered),
        "image": EnhancementImage.WATER if on_water else EnhancementImage.IN_PHASE}
    pre = volumes.water if on_water and volumes.water is not None else volumes.in_phase
    return pre, post, [stack]


def _fat_suppressed(companions: Companions, volumes: SetVolumes, marrow: np.ndarray | None,
                    cache: PixelCache, rules: CompanionRules, joined: CompanionsShape
                    ) -> tuple[np.ndarray | None, Stack | None]:
    """The fat-suppressed series on the set's grid."""
    stack = companions.fat_suppressed
    if stack is None:
        return None, None
    why = companions.fat_suppressed_evidence
    if len(stack.frames) < 2:
        joined["left_out"].append(_left_out(stack, CompanionKind.FAT_SUPPRESSED,
                                            f"{why}, but a single slice: no volume"))
        return None, None
    pixel = stack.first.pixel_spacing or (1.0, 1.0)
    geometry = stack_geometry(stack, (slice_spacing_mm(stack), float(pixel[0]),
                                      float(pixel[1])))
    values = resample_onto(load_stack(stack, cache), geometry, volumes.geometry,
                           volumes.in_phase.shape)
    usable, covered = _covered(values, marrow, stack, CompanionKind.FAT_SUPPRESSED,
                               f"{why}, but it ", rules, joined)
    if not usable:
        return None, None
    joined["fat_suppressed"] = _series(stack, [why], covered)
    return values, stack


def _rounded(value: float | None) -> float | None:
    return round(value, 1) if value is not None and np.isfinite(value) else None
