"""Follow-up in words where the radiologist looks: beside each focus on the summary page and
the overlay ("NEW", "GROWN 8 -> 15 mm"), the checklist's growth row, and the prior's foci not
seen again."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from marrownode.report import SetReport
from marrownode.report_shape import ComparedFocus
from marrownode.vocabulary import ChangeStatus

#: (text, (row, column)) on a slice, as results/overlay.py draws body names.
SliceLabel = tuple[str, tuple[float, float]]
#: Which changes are written on the images (stable and smaller stay in the SR and the page).
SHOWN_ON_IMAGES = (ChangeStatus.NEW, ChangeStatus.GROWN)


def change_words(report: SetReport) -> dict[int, str]:
    """Per focus (index into report.foci), its change since the prior with the sizes then and
    now (equivalent-sphere diameters, the rule's measure): 'GROWN 8 -> 15 mm', 'NEW'."""
    comparison = report.comparison
    if comparison is None:
        return {}
    words = {}
    for line in comparison["foci"]:
        index = line["focus_index"]
        if index is None:
            continue
        status, was, now = line["status"], line["prior_diameter_mm"], line["diameter_mm"]
        words[index] = (status.upper() if was is None or now is None
                        else f"{status.upper()} {was:.0f} -> {now:.0f} mm")
    return words


def focus_labels(focus_masks: Sequence[np.ndarray], report: SetReport,
                 ) -> list[list[SliceLabel]]:
    """Per slice, 'NEW' or 'GROWN 8 -> 15 mm' to the right of each such focus's section."""
    words = change_words(report)
    statuses = {line["focus_index"]: line["status"] for line in
                (report.comparison["foci"] if report.comparison else [])}
    slices = focus_masks[0].shape[0] if focus_masks else 0
    per_slice: list[list[SliceLabel]] = [[] for _ in range(slices)]
    for index, mask in enumerate(focus_masks):
        if statuses.get(index) not in SHOWN_ON_IMAGES:
            continue
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            rows, columns = np.nonzero(mask[k])
            per_slice[int(k)].append((words[index], (float(rows.mean()),
                                                     float(columns.max()) + 6.0)))
    return per_slice


def growth_finding(report: SetReport) -> str:
    """The checklist row: what grew or is new since the prior, or that nothing did."""
    comparison = report.comparison
    if comparison is None:
        return "not assessed: no earlier study of this patient found"
    date = comparison["prior"]["study_date"]
    when = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) >= 8 else "the prior"
    changes = [f"{line['level'] or 'focus'} {words}" for line, words in (
        (line, _line_words(line)) for line in comparison["foci"])
        if line["status"] in SHOWN_ON_IMAGES]
    pattern = comparison["pattern"]
    if pattern["changed"]:
        changes.append(f"pattern {pattern['prior'].replace('_', ' ')} -> "
                       f"{pattern['current'].replace('_', ' ')}")
    if changes:
        return f"yes, since {when}: " + "; ".join(changes)
    kept = sum(1 for line in comparison["foci"] if line["status"] == ChangeStatus.STABLE)
    return f"no, since {when}: {kept} focus/foci stable, none new or grown"


def _line_words(line: ComparedFocus) -> str:
    was, now = line["prior_diameter_mm"] or 0.0, line["diameter_mm"] or 0.0
    if line["status"] == ChangeStatus.NEW:
        return f"new ({now:.0f} mm)"
    return f"grown {was:.0f} -> {now:.0f} mm"


def resolved_lines(report: SetReport) -> list[str]:
    """The prior's foci not seen again."""
    comparison = report.comparison
    if comparison is None:
        return []
    return [f"{line['level'] or '?'}: prior focus of {line['prior_diameter_mm']:.0f} mm "
            "not seen (resolved)" for line in comparison["foci"]
            if line["status"] == ChangeStatus.RESOLVED and line["prior_diameter_mm"]]
