"""Series that join a Dixon set as evidence: its post-contrast twin and a fat-suppressed
fluid-sensitive series, recognised from their headers, every decision with its evidence
(docs/companions.md).

- Post-contrast: Contrast/Bolus Agent (0018,0010) when the scanner fills it; else the words
  technologists and protocols use (+C, Gd, KM, post, contrast ...), a pre-contrast word
  (pre, nativ, ohne KM) vetoing; else acquisition order: a series acquired after one that
  shows contrast is itself after the injection. A post-contrast Dixon set whose pre-contrast
  twin (same grid, echo times within a millisecond) is in the study is that set's twin, not a
  set of its own: Gd shortens T1 and would change its own loss verdict.
- Fat-suppressed and fluid-sensitive: STIR / TIRM (inversion recovery with a short inversion
  time, 80-300 ms, which nulls fat at 1.5 and 3 T), T2 with fat saturation (TE of 40 ms or
  more and ScanOptions FS / spectral suppression / a fat-saturation word), a T2 Dixon water
  image (WATER in ImageType, TE of 40 ms or more).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from marrownode.dixon.contrast import contrast_words, words
from marrownode.dixon.header import MARROWNODE_MANUFACTURER
from marrownode.dixon.roles import Frame, Role, fat_suppressed, geometry_key
from marrownode.dixon.sets import DixonSet, Stack
from marrownode.vocabulary import CompanionKind

#: Words for a fat-suppressed fluid-sensitive series.
FLUID_FAT_SUPPRESSED_WORDS = frozenset({"STIR", "TIRM", "SPAIR", "SPIR", "FS", "FATSAT",
                                        "FAT_SAT", "FSAT", "CHESS", "FATSUP"})
#: Inversion times that null fat (STIR): about 0.69 x T1 of fat, 150-170 ms at 1.5 T and
#: 200-250 ms at 3 T; the window allows for vendors' choices.
STIR_INVERSION_MS = (80.0, 300.0)
#: A T2-weighted echo time: longer than any T1 or Dixon echo.
T2_MIN_ECHO_MS = 40.0
#: Twin Dixon sets acquire the same echoes: echo times within this many ms.
TWIN_ECHO_TOLERANCE_MS = 1.0


def fat_suppressed_fluid(frame: Frame) -> str | None:
    """Why this series is fat-suppressed and fluid-sensitive, or None."""
    scanning = {s.upper() for s in frame.scanning_sequence}
    said = words(f"{frame.series_description} {frame.protocol_name}")
    inversion = frame.inversion_time
    if "IR" in scanning and inversion is not None and (
            STIR_INVERSION_MS[0] <= inversion <= STIR_INVERSION_MS[1]):
        return f"inversion recovery, TI {inversion:g} ms (STIR: fat nulled)"
    if said & {"STIR", "TIRM"}:
        return f"description says {sorted(said & {'STIR', 'TIRM'})[0]}"
    long_echo = frame.echo_time is not None and frame.echo_time >= T2_MIN_ECHO_MS
    if long_echo and {"W", "WATER"} & {t.upper() for t in frame.image_type[2:]}:
        return f"T2 Dixon water image (TE {frame.echo_time:g} ms)"
    if long_echo and (why := fat_suppressed(frame)):
        return f"T2-weighted (TE {frame.echo_time:g} ms) with fat saturation ({why})"
    return None


@dataclass(frozen=True)
class LeftOut:
    """A series that could have joined a set, and why it did not."""

    series_uid: str
    description: str
    kind: CompanionKind
    reason: str


@dataclass
class Companions:
    """What joins one Dixon set: its post-contrast twin, a fat-suppressed stack, and the
    candidates left out with their reasons."""

    post_contrast: DixonSet | None = None
    post_contrast_evidence: list[str] = field(default_factory=list)
    fat_suppressed: Stack | None = None
    fat_suppressed_evidence: str = ""
    left_out: list[LeftOut] = field(default_factory=list)

    def series_uids(self) -> set[str]:
        uids = set(self.post_contrast.series_uids()) if self.post_contrast else set()
        return uids | ({self.fat_suppressed.series_uid} if self.fat_suppressed else set())


@dataclass(frozen=True)
class Plan:
    """The sets to analyse (twins removed) and each one's companions by set key."""

    sets: list[DixonSet]
    companions: dict[str, Companions]


def _acquired(frame: Frame) -> tuple[str, int]:
    """Acquisition order key: series time (HHMMSS.frac), then series number."""
    return (frame.series_time or frame.acquisition_time or "", frame.series_number or 0)


def _post_contrast(frames_by_series: dict[str, Frame]) -> dict[str, tuple[bool, str]]:
    """Per series: after contrast or not, and the evidence. A series without header or
    words is after contrast when acquired after the first series that shows contrast."""
    said = {uid: contrast_words(frame) for uid, frame in frames_by_series.items()}
    shown = [frames_by_series[uid] for uid, (post, _) in said.items() if post]
    first = min(shown, key=_acquired) if shown else None
    decided: dict[str, tuple[bool, str]] = {}
    for uid, (post, evidence) in said.items():
        frame = frames_by_series[uid]
        if post is None and first is not None and frame.series_time and first.series_time \
                and frame.series_time > first.series_time:
            decided[uid] = (True, f"acquired after series {first.series_number} "
                                  f"('{first.series_description}'), which shows contrast")
        else:
            decided[uid] = (bool(post), evidence or "no contrast agent, word or order")
    return decided


def _twins(a: DixonSet, b: DixonSet) -> bool:
    """Same grid and the same echoes: one sequence acquired twice."""
    def echoes(s: DixonSet) -> np.ndarray:
        return np.array([s.in_phase.echo_time or 0.0, s.opposed.echo_time or 0.0])

    return (geometry_key(a.in_phase.first) == geometry_key(b.in_phase.first)
            and len(a.in_phase.frames) == len(b.in_phase.frames)
            and bool(np.all(np.abs(echoes(a) - echoes(b)) <= TWIN_ECHO_TOLERANCE_MS)))


def plan(sets: list[DixonSet], frames: list[Frame]) -> Plan:
    """Pair each post-contrast Dixon set with its pre-contrast twin, and give every set a
    fat-suppressed series on its frame of reference (series of no set only). The node's own
    results, forwarded back by a PACS, are never companions."""
    frames = [f for f in frames if f.manufacturer != MARROWNODE_MANUFACTURER]
    first_frames: dict[str, Frame] = {}
    for frame in frames:
        first_frames.setdefault(frame.series_uid, frame)
    contrast = _post_contrast(first_frames)
    twins = _pair_twins(sets, contrast)
    analysed = [s for s in sets if s not in twins.values()]
    in_sets = {uid for s in sets for uid in s.series_uids()}
    stacks = _fluid_stacks([f for f in frames if f.series_uid not in in_sets])
    lone_post = [LeftOut(uid, frame.series_description, CompanionKind.POST_CONTRAST,
                         f"after contrast ({contrast[uid][1]}) but no Dixon twin of this set: "
                         "enhancement needs the same sequence before and after")
                 for uid, frame in first_frames.items()
                 if uid not in in_sets and frame.modality == "MR" and contrast[uid][0]
                 and uid not in {stack.series_uid for stack, _ in stacks}]
    plans = {}
    for dixon_set in analysed:
        companions = Companions(left_out=list(lone_post))
        own = contrast[dixon_set.in_phase.series_uid]
        if (twin := twins.get(dixon_set.key)) is not None:
            companions.post_contrast = twin
            companions.post_contrast_evidence = [contrast[twin.in_phase.series_uid][1],
                                                 "twin of this set: same grid and echoes"]
        elif own[0]:
            companions.left_out.insert(0, LeftOut(
                dixon_set.in_phase.series_uid, dixon_set.in_phase.first.series_description,
                CompanionKind.POST_CONTRAST,
                f"this set is itself after contrast ({own[1]}) and has no pre-contrast twin in "
                "the study: enhancement not measured; gadolinium shortens T1, so read its "
                "signal loss with care"))
        _choose_fat_suppressed(dixon_set, stacks, contrast, companions)
        plans[dixon_set.key] = companions
    return Plan(analysed, plans)


def _pair_twins(sets: list[DixonSet], contrast: dict[str, tuple[bool, str]]
                ) -> dict[str, DixonSet]:
    """Post-contrast twin by pre-contrast set key: the latest pre-contrast twin acquired
    before it takes it."""
    twins: dict[str, DixonSet] = {}
    for post in sets:
        if not contrast[post.in_phase.series_uid][0]:
            continue
        candidates = [s for s in sets if s is not post and not contrast[
            s.in_phase.series_uid][0] and _twins(s, post) and s.key not in twins]
        if candidates:
            twins[max(candidates, key=lambda s: _acquired(s.in_phase.first)).key] = post
    return twins


def _fluid_stacks(frames: list[Frame]) -> list[tuple[Stack, str]]:
    """Fat-suppressed fluid-sensitive series as stacks (one geometry each), with evidence."""
    groups: dict[tuple[object, ...], list[Frame]] = defaultdict(list)
    for frame in frames:
        if frame.modality == "MR" and frame.position and frame.orientation:
            groups[(frame.series_uid, geometry_key(frame))].append(frame)
    stacks = []
    for (series_uid, _), members in groups.items():
        why = fat_suppressed_fluid(members[0])
        if why is None:
            continue
        orientation = np.array(members[0].orientation, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([np.dot(np.array(f.position, dtype=float), normal)
                              for f in members])
        order = np.argsort(positions, kind="stable")
        stack = Stack(Role.NONE, str(series_uid), members[0].echo_time,
                      [members[i] for i in order], why, positions[order])
        stacks.append((stack, why))
    return stacks


def _choose_fat_suppressed(dixon_set: DixonSet, stacks: list[tuple[Stack, str]],
                           contrast: dict[str, tuple[bool, str]],
                           companions: Companions) -> None:
    """The set's fat-suppressed series: on its frame of reference, with distinct slice
    positions; the same orientation first, then pre-contrast, then the most slices."""
    reference = dixon_set.in_phase.first.frame_of_reference_uid
    usable = []
    for stack, why in stacks:
        frame = stack.first
        if frame.frame_of_reference_uid != reference or not reference:
            companions.left_out.append(LeftOut(
                stack.series_uid, frame.series_description, CompanionKind.FAT_SUPPRESSED,
                f"{why}, but its frame of reference differs from the Dixon set's: patient "
                "coordinates cannot be matched"))
        elif stack.positions_mm.size > 1 and np.any(np.diff(stack.positions_mm) < 0.05):
            companions.left_out.append(LeftOut(
                stack.series_uid, frame.series_description, CompanionKind.FAT_SUPPRESSED,
                f"{why}, but its images repeat slice positions"))
        else:
            usable.append((stack, why))
    if not usable:
        return
    usable.sort(key=lambda item: (item[0].label != dixon_set.in_phase.label,
                                  contrast.get(item[0].series_uid, (False, ""))[0],
                                  -len(item[0].frames)))
    companions.fat_suppressed, companions.fat_suppressed_evidence = usable[0]
    for stack, why in usable[1:]:
        companions.left_out.append(LeftOut(
            stack.series_uid, stack.first.series_description, CompanionKind.FAT_SUPPRESSED,
            f"{why}; series {usable[0][0].first.series_number} was used instead"))
