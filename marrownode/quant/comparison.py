"""A follow-up against the patient's prior: the two studies' columns aligned by their named
bodies, foci matched by level and position, each focus given a status by a stated rule.

Patient coordinates are not shared across studies (another day, another frame of reference):
the prior's points are carried into the current study by the rigid motion that best maps the
prior's body centroids onto the current ones of the same names (least squares, Kabsch), or by
their mean shift when fewer than three bodies are shared. docs/follow-up.md gives the rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from marrownode.vocabulary import ChangeStatus


@dataclass(frozen=True)
class ComparisonRules:
    """When a focus has grown or shrunk, and how far apart two foci may lie to be one.

    grown: equivalent-sphere diameter up by at least grown_percent and by at least
    grown_min_mm (RECIST's 20 % + 5 mm, scaled to marrow foci); smaller: down by as much."""

    grown_percent: float = 20.0
    grown_min_mm: float = 3.0
    match_distance_mm: float = 15.0


@dataclass(frozen=True)
class Body:
    """A named vertebral body of one study: its name and centroid (patient mm)."""

    name: str
    centroid_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Lesion:
    """A focus of one study: where it lies (level or body name), centroid, volume."""

    site: str | None
    centroid_mm: tuple[float, float, float]
    volume_mm3: float

    @property
    def diameter_mm(self) -> float:
        """The diameter of the sphere of its volume."""
        return float((6.0 * max(self.volume_mm3, 0.0) / math.pi) ** (1.0 / 3.0))


@dataclass(frozen=True)
class Alignment:
    """How the prior's points were carried into the current study, and how well it fits."""

    method: str  # "rigid by levels|order", "translation by levels|order", "none"
    levels: tuple[str, ...]
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    residual_mm: float | None = None
    pairs: tuple[tuple[str, str], ...] = ()  # (prior body, current body)

    def distance(self, before: Lesion, after: Lesion) -> float:
        """How far apart (mm) a prior focus, carried over, and a current one lie."""
        return float(np.linalg.norm(self.carry(before.centroid_mm)
                                    - np.asarray(after.centroid_mm)))

    def prior_name(self, current_name: str | None) -> str | None:
        """The prior's name of the body a current site names (by level, or paired by
        order)."""
        for before, after in self.pairs:
            if after == current_name:
                return before
        return current_name

    def carry(self, point: Sequence[float]) -> np.ndarray:
        """A prior point in the current study's patient coordinates."""
        return np.asarray(self.rotation @ np.asarray(point, dtype=float) + self.translation)


#: What pairing two foci across sites costs, in mm of distance.
SITE_CHANGE_MM = 5.0
#: Order alignment: at least this many bodies paired, and a fit this close (mm, RMS).
MIN_ORDER_PAIRS, MAX_ORDER_RESIDUAL_MM = 3, 8.0
#: Bodies this close to a straight line (second singular value of the cross-covariance under
#: this share of the first) leave the turn about it free; the alignment then prefers no
#: rotation, with this strength (a share of the first singular value).
STRAIGHT_COLUMN_SHARE, IDENTITY_PULL = 0.01, 0.05


@dataclass(frozen=True)
class Match:
    """One line of the comparison: a current focus, a prior one, or both, and its status."""

    status: ChangeStatus
    current: int | None  # index into the current foci
    prior: int | None  # index into the prior foci
    distance_mm: float | None = None


def _numbered(name: str) -> bool:
    """A body's number (V3), not its level: it says where the body is in this view only."""
    return name.startswith("V") and name[1:].isdigit()


def align(prior: Sequence[Body], current: Sequence[Body]) -> Alignment:
    """Carry the prior onto the current study: by the levels both name (two or more), else
    by the bodies' order (which offset between the two runs of bodies fits best)."""
    by_name = {body.name: body for body in current if not _numbered(body.name)}
    shared = [(body, by_name[body.name]) for body in prior if body.name in by_name]
    if len(shared) >= 2:
        return fit(shared, "levels")
    return align_by_order(prior, current)


def align_by_order(prior: Sequence[Body], current: Sequence[Body]) -> Alignment:
    """Where the levels are not named in both studies: pair the bodies in order, at the
    offset whose rigid fit leaves the smallest residual (at least three bodies paired, and
    a residual under MAX_ORDER_RESIDUAL_MM, else none: the columns cannot be lined up)."""
    best: Alignment | None = None
    for offset in range(-(len(prior) - 1), len(current)):
        pairs = [(prior[i], current[i + offset]) for i in range(len(prior))
                 if 0 <= i + offset < len(current)]
        if len(pairs) < MIN_ORDER_PAIRS:
            continue
        candidate = fit(pairs, "order")
        if best is None or (candidate.residual_mm or 0.0) < (best.residual_mm or 0.0):
            best = candidate
    if best is None or (best.residual_mm or 0.0) > MAX_ORDER_RESIDUAL_MM:
        return Alignment("none", ())
    return best


def fit(pairs: Sequence[tuple[Body, Body]], how: str) -> Alignment:
    """The rigid motion (3+ pairs) or shift (1-2) taking the prior bodies onto the current
    ones they are paired with."""
    shared = list(pairs)
    names = tuple(f"{before.name}={after.name}" if before.name != after.name else after.name
                  for before, after in shared)
    source = np.array([body.centroid_mm for body, _ in shared], dtype=float)
    target = np.array([body.centroid_mm for _, body in shared], dtype=float)
    if len(shared) < 3:
        shift = (target - source).mean(axis=0)
        residual = float(np.sqrt(((source + shift - target) ** 2).sum(axis=1).mean()))
        return Alignment(f"translation by {how}", names, translation=shift, residual_mm=residual,
                         pairs=tuple((a.name, b.name) for a, b in shared))
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    covariance = (source - source_mean).T @ (target - target_mean)
    # Bodies along a curve in one plane fix the rotation. Bodies on a nearly straight line
    # leave the turn about that line free: then a pull towards no rotation decides it (the
    # patient lies the same way up in both studies).
    spread = np.linalg.svd(covariance, compute_uv=False)
    straight = spread[1] < STRAIGHT_COLUMN_SHARE * spread[0]
    strength = IDENTITY_PULL * float(spread[0]) if straight else 0.0
    u, _, vt = np.linalg.svd(covariance + strength * np.eye(3))
    sign = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, sign]) @ u.T
    translation = target_mean - rotation @ source_mean
    moved = source @ rotation.T + translation
    residual = float(np.sqrt(((moved - target) ** 2).sum(axis=1).mean()))
    return Alignment(f"rigid by {how}", names, rotation, translation, residual,
                     tuple((a.name, b.name) for a, b in shared))


def change(prior: Lesion, current: Lesion, rules: ComparisonRules) -> ChangeStatus:
    """Grown, smaller or stable, by the equivalent diameters."""
    before, after = prior.diameter_mm, current.diameter_mm
    step = after - before
    relative = 100.0 * step / before if before > 0 else math.inf
    if step >= rules.grown_min_mm and relative >= rules.grown_percent:
        return ChangeStatus.GROWN
    if -step >= rules.grown_min_mm and -relative >= rules.grown_percent:
        return ChangeStatus.SMALLER
    return ChangeStatus.STABLE


def _pair_cost(before: Lesion, after: Lesion, alignment: Alignment,
               rules: ComparisonRules) -> float:
    """What pairing two foci costs (mm), or inf when they cannot be one focus."""
    same_site = before.site == alignment.prior_name(after.site)
    if alignment.method == "none":
        return 0.0 if same_site else math.inf
    distance = alignment.distance(before, after)
    reach = max(rules.match_distance_mm, (before.diameter_mm + after.diameter_mm) / 2)
    if distance > reach:
        return math.inf
    return distance + (0.0 if same_site else SITE_CHANGE_MM)


def _costs(prior: Sequence[Lesion], current: Sequence[Lesion], alignment: Alignment,
           rules: ComparisonRules) -> np.ndarray:
    """The cost of every pair; without an alignment, only sites that hold one focus in both
    studies keep theirs (by site alone, an ambiguous site pairs nothing)."""
    cost = np.array([[_pair_cost(before, after, alignment, rules) for after in current]
                     for before in prior], dtype=float).reshape(len(prior), len(current))
    if alignment.method == "none":
        finite = np.isfinite(cost)
        ambiguous = (finite.sum(axis=1, keepdims=True) > 1) | (finite.sum(axis=0) > 1)
        cost[finite & ambiguous] = np.inf
    return cost


def match_foci(prior: Sequence[Lesion], current: Sequence[Lesion], alignment: Alignment,
               rules: ComparisonRules) -> list[Match]:
    """Pair foci one to one within match_distance_mm of each other once the prior is
    aligned, the same site preferred (a pair across sites costs SITE_CHANGE_MM more: a
    focus near an endplate, or a body the localiser named differently, still pairs by
    position); an optimal assignment, the nearest pairs first. The rest are new (current
    only) or resolved (prior only). Without an alignment, foci pair by site alone where each
    site holds one focus in both studies."""
    cost = _costs(prior, current, alignment, rules)
    pairs: list[tuple[int, int]] = []
    if np.isfinite(cost).any():
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e9))
        pairs = [(i, j) for i, j in zip(rows.tolist(), cols.tolist(), strict=True)
                 if np.isfinite(cost[i, j])]
    matches = [Match(change(prior[i], current[j], rules), j, i,
                     None if alignment.method == "none"
                     else alignment.distance(prior[i], current[j])) for i, j in pairs]
    matches += [Match(ChangeStatus.NEW, j, None) for j in range(len(current))
                if j not in {j for _, j in pairs}]
    matches += [Match(ChangeStatus.RESOLVED, None, i) for i in range(len(prior))
                if i not in {i for i, _ in pairs}]
    return sorted(matches, key=lambda m: (m.current is None, m.current or 0, m.prior or 0))
