"""Compare two `marrownode process` output folders: the same files, each DICOM object equal
element by element (pixel data byte for byte) except when it was made, and report.json equal.

A refactoring that must not change behaviour is checked with it: run `marrownode process` on
the same inputs with the code before and after, then `python scripts/compare_outputs.py A B`.
Exit 0 when they agree, 1 with the differences listed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

#: When an object was made: the only elements a re-run may change (results/common.py).
MADE_AT = {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime",
           "SeriesDate", "SeriesTime", "DateOfSecondaryCapture", "TimeOfSecondaryCapture",
           "ContributionDateTime"}


def _differences(left: Dataset, right: Dataset, where: str) -> list[str]:
    found: list[str] = []
    tags = sorted(set(left.keys()) | set(right.keys()))
    for tag in tags:
        a, b = left.get(tag), right.get(tag)
        keyword = (a or b).keyword if (a or b) is not None else str(tag)
        if keyword in MADE_AT:
            continue
        if a is None or b is None:
            found.append(f"{where}{keyword}: only in {'right' if a is None else 'left'}")
        elif a.VR == "SQ":
            if len(a.value) != len(b.value):
                found.append(f"{where}{keyword}: {len(a.value)} vs {len(b.value)} items")
                continue
            for number, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                found += _differences(x, y, f"{where}{keyword}[{number}].")
        elif a.value != b.value:
            found.append(f"{where}{keyword}: differs")
    return found


def compare(left: Path, right: Path) -> list[str]:
    """Every difference between two output folders that is not when an object was made."""
    problems: list[str] = []
    files_left = {p.relative_to(left) for p in left.rglob("*") if p.is_file()}
    files_right = {p.relative_to(right) for p in right.rglob("*") if p.is_file()}
    for name in sorted(files_left ^ files_right):
        problems.append(f"{name}: only in {'left' if name in files_left else 'right'}")
    for name in sorted(files_left & files_right):
        if name.suffix == ".dcm":
            a, b = dcmread(left / name), dcmread(right / name)
            problems += [f"{name}: {d}" for d in _differences(a.file_meta, b.file_meta, "meta.")]
            problems += [f"{name}: {d}" for d in _differences(a, b, "")]
        elif name.suffix == ".json":
            if json.loads((left / name).read_text()) != json.loads((right / name).read_text()):
                problems.append(f"{name}: differs")
        elif (left / name).read_bytes() != (right / name).read_bytes():
            problems.append(f"{name}: differs")
    return problems


def main(argv: list[str]) -> int:
    """compare_outputs.py LEFT RIGHT."""
    left, right = (Path(a) for a in argv[1:3])
    problems = compare(left, right)
    for problem in problems:
        print(problem)
    count = sum(1 for p in left.rglob("*") if p.is_file())
    print(f"{count} files compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
