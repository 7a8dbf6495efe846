"""When is a study's Dixon set complete? Content first, the idle timer only as a fallback.

A set is ready when its echoes cover identical slice positions (pairing guarantees that), the
counts agree with what the headers promise (ImagesInAcquisition, frames of a multi-frame object)
and the associations that delivered them have ended. When headers promise nothing, the idle timer
decides. Every decision carries its reason for the index and `marrownode status`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from marrownode.dixon.roles import classify, frames_from_header
from marrownode.dixon.sets import DixonSet, assemble
from marrownode.states import SetState


class Verdict(StrEnum):
    """What the assembler does with the study next."""

    READY = "ready"  # analyse it
    WAITING = "waiting"  # wait for more data or the end of the association
    NO_DIXON_SET = "no_dixon_set"  # nothing to analyse


@dataclass(frozen=True)
class SetDecision:
    """One Dixon set's completeness, with the reason shown in `marrownode status`."""

    key: str
    state: SetState
    reason: str


@dataclass
class Decision:
    """The study's verdict, its reason, and each set's decision."""

    verdict: Verdict
    reason: str
    sets: list[SetDecision] = field(default_factory=list)


@dataclass(frozen=True)
class _SeriesCount:
    received: int
    promised: int | None  # ImagesInAcquisition, None when no header promises a count
    multi_frame: bool  # a multi-frame object arrives whole


def _series_counts(headers: Sequence[dict[str, Any]]) -> dict[str, _SeriesCount]:
    by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for header in headers:
        by_series[header.get("series_uid", "")].append(header)
    counts = {}
    for series_uid, instances in by_series.items():
        promises = [h["images_in_acquisition"] for h in instances
                    if h.get("images_in_acquisition")]
        counts[series_uid] = _SeriesCount(
            received=len(instances),
            promised=max(promises) if promises else None,
            multi_frame=any((h.get("number_of_frames") or 1) > 1 for h in instances),
        )
    return counts


def _shortfall(series_uid: str, count: _SeriesCount) -> str | None:
    if count.multi_frame or count.promised is None or count.received >= count.promised:
        return None
    return f"series {series_uid}: {count.received} of {count.promised} images"


def _content_verdict(
    dixon_set: DixonSet, counts: dict[str, _SeriesCount], sent_whole: frozenset[str]
) -> tuple[bool | None, str]:
    """True complete, False incomplete, None undecidable — with the reason. A series that
    promises no count is complete when a whole-study sender delivered it (sent_whole)."""
    undecided = whole = 0
    for series_uid in sorted(dixon_set.series_uids()):
        count = counts.get(series_uid, _SeriesCount(0, None, False))
        missing = _shortfall(series_uid, count)
        if missing:
            return False, missing
        if count.promised is None and not count.multi_frame:
            if series_uid in sent_whole:
                whole += 1
            else:
                undecided += 1
    if undecided:
        return None, f"{undecided} series promise no image count"
    if whole:
        return True, (f"{whole} series sent whole by a PACS peer (completion."
                      "whole_study_senders) in associations that have ended")
    return True, "counts match the headers and slice positions agree"


def decide(
    headers: Sequence[dict[str, Any]],
    association_open: bool,
    last_received: float,
    now: float,
    idle_seconds: float,
    sent_whole: frozenset[str] = frozenset(),
) -> Decision:
    """Decide a study's state from its instances' header summaries (sent_whole: series that
    a whole-study sender delivered in associations that have ended)."""
    idle = now - last_received >= idle_seconds
    idle_note = f"idle {idle_seconds:g} s after the last instance"
    frames = [frame for header in headers for frame in frames_from_header(header)]
    assembly = assemble(classify(frames))
    counts = _series_counts(headers)
    if not assembly.sets:
        if idle and not association_open:
            return Decision(Verdict.NO_DIXON_SET, "no in-/opposed-phase pair found")
        if idle:
            return Decision(Verdict.NO_DIXON_SET,
                            f"no in-/opposed-phase pair found ({idle_note})")
        missing = [m for uid, c in sorted(counts.items()) if (m := _shortfall(uid, c))]
        return Decision(Verdict.WAITING, "; ".join(["no Dixon set yet", *missing]))
    set_states: list[SetDecision] = []
    ready_by_content = True
    reasons: list[str] = []
    for dixon_set in assembly.sets:
        verdict, why = _content_verdict(dixon_set, counts, sent_whole)
        if verdict is True and not association_open:
            set_states.append(SetDecision(dixon_set.key, SetState.READY, why))
            continue
        ready_by_content = False
        if verdict is True:
            why = "waiting for the sending association to end"
        if idle:
            set_states.append(SetDecision(dixon_set.key, SetState.READY, f"{idle_note}; {why}"))
        else:
            set_states.append(SetDecision(dixon_set.key, SetState.WAITING, why))
        reasons.append(why)
    if ready_by_content:
        return Decision(Verdict.READY, "complete by content: " + "; ".join(
            dict.fromkeys(s.reason for s in set_states)), set_states)
    if idle:
        return Decision(Verdict.READY, f"{idle_note}; content could not confirm completeness",
                        set_states)
    return Decision(Verdict.WAITING, "; ".join(dict.fromkeys(reasons)), set_states)
