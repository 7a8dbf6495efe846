"""How the console words what it shows: times, durations and what a pattern means."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marrownode.vocabulary import PATTERN_MEANINGS, set_meaning

#: What a pattern means for the reader (the clinical rule of the node).
PATTERN_WORDS = PATTERN_MEANINGS  # one wording, shared with the summary page


def set_words(dixon_set: dict[str, Any]) -> str:
    """What a set's pattern means, knowing its foci (a report.json set), as its summary page
    says it: fat-containing foci alone are not called worrying."""
    return set_meaning(dixon_set.get("pattern"),
                       [str(f.get("category", "")) for f in dixon_set.get("foci") or []])


def local_time(epoch: float | None) -> str:
    """A time in the operator's local time ("" when there is none)."""
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration_words(seconds: float | None) -> str:
    """12 s, 4 min, 2.5 h."""
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
