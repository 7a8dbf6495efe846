"""Stacks and Dixon sets: split classified frames by role, pair in- with opposed-phase on identical
geometry, attach water/fat (and a scanner fat-fraction map), and say why anything was not used.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from marrownode.dixon.contrast import after_contrast
from marrownode.dixon.roles import Classified, Frame, Role, geometry_key
from marrownode.report_shape import SkippedSeries
from marrownode.vocabulary import Flag

POSITION_TOLERANCE_MM = 0.05
ORIENTATION_TOLERANCE = 1e-3


@dataclass
class Stack:
    """Frames of one role, one series, one echo time and one geometry, sorted along the normal."""

    role: Role
    series_uid: str
    echo_time: float | None
    frames: list[Frame]
    evidence: str
    positions_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def first(self) -> Frame:
        return self.frames[0]

    @property
    def normal(self) -> np.ndarray:
        orientation = np.array(self.first.orientation, dtype=float)
        return np.cross(orientation[:3], orientation[3:])

    @property
    def label(self) -> str:
        """sagittal / coronal / axial from the dominant axis of the slice normal."""
        axis = int(np.argmax(np.abs(self.normal)))
        return ("sagittal", "coronal", "axial")[axis]

    def describe(self) -> str:
        te = f" TE {self.echo_time:g} ms" if self.echo_time is not None else ""
        return f"{self.role.value} stack of {len(self.frames)} ({self.label}{te})"


@dataclass(frozen=True)
class SeriesProblem:
    """Why (part of) a series cannot be used, reported as a skipped series."""

    series_uid: str
    reason: str


def build_stacks(classified: list[Classified]) -> tuple[list[Stack], list[SeriesProblem]]:
    """Group frames into stacks; return stacks and problems found while building them."""
    groups: dict[tuple[Any, ...], list[Classified]] = defaultdict(list)
    for item in classified:
        if item.role is Role.NONE:
            continue
        te = item.frame.echo_time
        te_key = round(te, 2) if item.role in (Role.IN_PHASE, Role.OPPOSED_PHASE) and te else None
        groups[(item.frame.series_uid, item.role, te_key, geometry_key(item.frame))].append(item)
    stacks: list[Stack] = []
    problems, dropped = _inconsistent_geometry(groups)
    for (series_uid, role, te_key, geometry), items in groups.items():
        if (series_uid, role, te_key, geometry) in dropped:
            continue
        frames = [item.frame for item in items]
        orientation = np.array(frames[0].orientation, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([np.dot(np.array(f.position, dtype=float), normal) for f in frames])
        order = np.argsort(positions, kind="stable")
        frames = [frames[i] for i in order]
        positions = positions[order]
        if positions.size > 1 and np.any(np.diff(positions) < POSITION_TOLERANCE_MM):
            problems.append(SeriesProblem(series_uid,
                                          f"{role.value} images repeat slice positions"))
            continue
        stacks.append(Stack(role, series_uid, te_key, frames, items[0].evidence, positions))
    return stacks, problems


#: Two geometries of one stack whose slice normals are closer than this (degrees) are the same
#: plane stated inconsistently, not two planes (a sagittal and an axial stack).
SAME_PLANE_DEGREES = 10.0


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    values = np.array(orientation, dtype=float)
    return np.cross(values[:3], values[3:]) if values.size == 6 else np.zeros(3)


def _inconsistent_geometry(groups: dict[tuple[Any, ...], list[Classified]]
                           ) -> tuple[list[SeriesProblem], set[tuple[Any, ...]]]:
    """Frames of one series, role and echo that lie in the same plane but state different
    pixel spacings or orientations (a functional group that varies per frame where it must
    not) cannot make one stack: they are left out with the reason (the problems, and the
    group keys to leave out)."""
    dropped: set[tuple[Any, ...]] = set()
    by_stack: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for key in groups:
        by_stack[key[:3]].append(key)
    problems = []
    for (series_uid, role, _), keys in by_stack.items():
        clash = {key for a in keys for b in keys if a != b and a[3][0] == b[3][0]
                 and abs(float(np.dot(_normal(a[3][1]), _normal(b[3][1]))))
                 > np.cos(np.radians(SAME_PLANE_DEGREES))}
        if clash:
            dropped.update(clash)
            problems.append(SeriesProblem(series_uid, (
                f"{role.value} frames of one stack differ in pixel spacing or orientation "
                f"({len(clash)} geometries): left out")))
    return problems, dropped


def _same_plane_grid(a: Stack, b: Stack) -> str | None:
    """None when a and b share geometry and slice positions, else what differs."""
    fa, fb = a.first, b.first
    if fa.frame_of_reference_uid != fb.frame_of_reference_uid:
        return "frame of reference differs"
    if not np.allclose(fa.orientation or (), fb.orientation or (), atol=ORIENTATION_TOLERANCE):
        return "orientation differs"
    if (fa.rows, fa.columns) != (fb.rows, fb.columns) or not np.allclose(
        fa.pixel_spacing or (), fb.pixel_spacing or (), atol=1e-3
    ):
        return "in-plane grid differs"
    if a.positions_mm.shape != b.positions_mm.shape:
        return f"slice count differs ({len(a.frames)} vs {len(b.frames)})"
    if not np.allclose(a.positions_mm, b.positions_mm, atol=POSITION_TOLERANCE_MM):
        return "slice positions differ"
    first_a = np.array(fa.position, dtype=float)
    first_b = np.array(fb.position, dtype=float)
    if not np.allclose(first_a, first_b, atol=0.5):
        return "in-plane position differs"
    return None


@dataclass
class DixonSet:
    in_phase: Stack
    opposed: Stack
    water: Stack | None = None
    fat: Stack | None = None
    scanner_fat_fraction: Stack | None = None
    flags: list[Flag] = field(default_factory=list)

    @property
    def key(self) -> str:
        text = "|".join([self.in_phase.series_uid, str(self.in_phase.echo_time),
                         self.opposed.series_uid, str(self.opposed.echo_time)])
        return f"{self.in_phase.label}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"

    @property
    def field_strength_t(self) -> float | None:
        value = self.in_phase.first.field_strength_t or self.opposed.first.field_strength_t
        return round(value, 2) if value else None

    def stacks(self) -> list[Stack]:
        return [s for s in (self.in_phase, self.opposed, self.water, self.fat,
                            self.scanner_fat_fraction) if s is not None]

    def series_uids(self) -> set[str]:
        return {s.series_uid for s in self.stacks()}


@dataclass
class Assembly:
    sets: list[DixonSet]
    skipped_series: list[SkippedSeries]


def assemble(classified: list[Classified]) -> Assembly:
    """Find every Dixon set among classified frames of one study."""
    stacks, problems = build_stacks(classified)
    by_role: dict[Role, list[Stack]] = defaultdict(list)
    for stack in stacks:
        by_role[stack.role].append(stack)
    used: set[int] = set()
    sets = _pair_echoes(by_role, used)
    for dixon_set in sets:
        _attach_water_fat(dixon_set, by_role, used)
    skipped = _skipped_series(classified, stacks, problems, by_role, used, sets)
    sets.sort(key=lambda s: (s.in_phase.label, s.in_phase.series_uid))
    return Assembly(sets, skipped)


def _pair_echoes(by_role: dict[Role, list[Stack]], used: set[int]) -> list[DixonSet]:
    """Pair opposed- with in-phase stacks on identical geometry, closest echo times first and
    opposed-phase-first pairs before in-phase-first ones."""
    candidates = []
    for op in by_role[Role.OPPOSED_PHASE]:
        for ip in by_role[Role.IN_PHASE]:
            if _same_plane_grid(op, ip) is None:
                te_gap = abs((ip.echo_time or 0) - (op.echo_time or 0))
                ip_first = (ip.echo_time or 0) < (op.echo_time or 0)
                candidates.append((te_gap, ip_first, _apart(ip, op), op, ip))
    sets: list[DixonSet] = []
    for *_, op, ip in sorted(candidates, key=lambda c: c[:3]):
        if id(op) in used or id(ip) in used:
            continue
        used.update((id(op), id(ip)))
        dixon_set = DixonSet(in_phase=ip, opposed=op)
        if ip.echo_time is not None and op.echo_time is not None and ip.echo_time < op.echo_time:
            dixon_set.flags.append(Flag.IN_PHASE_FIRST)
        if "echo_time" in (ip.evidence, op.evidence):
            dixon_set.flags.append(Flag.ROLES_FROM_ECHO_TIME)
        sets.append(dixon_set)
    return sets


def _apart(a: Stack, b: Stack) -> tuple[bool, int]:
    """How far apart two stacks' acquisitions lie: one before and one after contrast first
    (a pre-contrast in-phase never pairs with its post-contrast twin's opposed-phase), then
    the distance of their series numbers (a vendor's Dixon outputs are numbered together)."""
    return (after_contrast(a.first) != after_contrast(b.first),
            abs((a.first.series_number or 0) - (b.first.series_number or 0)))


def _attach_water_fat(dixon_set: DixonSet, by_role: dict[Role, list[Stack]],
                      used: set[int]) -> None:
    """Water, fat and a scanner fat-fraction map on the set's grid, from its own series first."""
    ip, op = dixon_set.in_phase, dixon_set.opposed
    for role, attribute in ((Role.WATER, "water"), (Role.FAT, "fat"),
                            (Role.FAT_FRACTION, "scanner_fat_fraction")):
        matches = [s for s in by_role[role]
                   if id(s) not in used and _same_plane_grid(ip, s) is None]
        matches.sort(key=lambda s: (s.series_uid not in (ip.series_uid, op.series_uid),
                                    _apart(ip, s)))
        if matches:
            setattr(dixon_set, attribute, matches[0])
            used.add(id(matches[0]))
    if (dixon_set.water is None) != (dixon_set.fat is None):
        dixon_set.flags.append(Flag.WATER_OR_FAT_MISSING)


def _skipped_series(classified: list[Classified], stacks: list[Stack],
                    problems: list[SeriesProblem], by_role: dict[Role, list[Stack]],
                    used: set[int], sets: list[DixonSet]) -> list[SkippedSeries]:
    """Every series no set uses, with all the reasons found for it."""
    found = [SeriesProblem(s.series_uid, _why_unused(s, by_role))
             for s in stacks if id(s) not in used]
    found += problems
    found += [SeriesProblem(item.frame.series_uid, item.reason)
              for item in classified if item.role is Role.NONE]
    reasons: dict[str, list[str]] = defaultdict(list)
    for problem in found:
        reasons[problem.series_uid].append(problem.reason)
    used_series = {uid for s in sets for uid in s.series_uids()}
    skipped: list[SkippedSeries] = [
        {"series_instance_uid": series_uid, "reason": "; ".join(dict.fromkeys(why))}
        for series_uid, why in reasons.items() if series_uid not in used_series]
    return sorted(skipped, key=lambda s: s["series_instance_uid"])


def _why_unused(stack: Stack, by_role: dict[Role, list[Stack]]) -> str:
    partner_role = {Role.IN_PHASE: Role.OPPOSED_PHASE, Role.OPPOSED_PHASE: Role.IN_PHASE}.get(
        stack.role, Role.IN_PHASE)
    if stack.role is Role.FAT_FRACTION:
        prefix = "scanner fat-fraction map (recognised, not an echo)"
    else:
        prefix = stack.describe()
    partners = by_role.get(partner_role, [])
    if not partners:
        return f"{prefix}: no {partner_role.value} stack in the study"
    differences = {d for p in partners if (d := _same_plane_grid(stack, p)) is not None}
    if not differences:
        return f"{prefix}: its matching {partner_role.value} stack was paired with another"
    return f"{prefix}: not paired, {partner_role.value} geometry: {', '.join(sorted(differences))}"
