"""The header summary every received instance gets reads plain values (numbers, codes, UIDs,
dates) with pydicom's own converter but without the DataElement pydicom builds for each
element (dixon/header.py, _value): twice as fast, and it must change nothing. Every summary
is compared with the one plain pydicom access gives, over every synthetic vendor style and
Enhanced MR layout, the real study in the suite and pydicom's own test files (implicit VR,
big endian, deflated, private tags, and names and text in 17 character sets)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.values import convert_value

from marrownode.dixon import header
from marrownode.store.ingest import HEADER_VALUE_BYTES
from marrownode.synthetic.enhanced import LAYOUTS
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets
from marrownode.synthetic.styles import STYLES

REAL = Path(__file__).resolve().parents[1] / "data" / "chaos-2154211114-lumbar"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data"  # test_files and charset_files


def _read(path: Path) -> pydicom.Dataset:
    return dcmread(path, stop_before_pixels=True, defer_size=HEADER_VALUE_BYTES, force=True)


def _compare(paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> int:
    """Assert each file's summary is pydicom's; return how many values took the fast path."""
    fast_reads = 0

    def counted(*args: object) -> object:
        nonlocal fast_reads
        fast_reads += 1
        return convert_value(*args)  # type: ignore[arg-type]

    compared = 0
    for path in paths:
        try:
            plain_dataset = _read(path)
        except Exception:  # not a file pydicom reads: nothing to compare
            continue
        with monkeypatch.context() as patch:
            patch.setattr(header, "_value", lambda dataset, keyword: dataset.get(keyword))
            try:
                expected = header.summarise(plain_dataset)
            except Exception as exc:  # the fast path must fail alike
                with pytest.raises(type(exc)):
                    header.summarise(_read(path))
                continue
        with monkeypatch.context() as patch:
            patch.setattr(header, "convert_value", counted)
            assert header.summarise(_read(path)) == expected, path.name
        compared += 1
    assert compared
    return fast_reads


def test_summaries_of_every_vendor_style_and_layout_are_pydicoms(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = []
    for style in STYLES:
        datasets += build_study(StudyOptions(style=style, study_key=f"summary-{style}"))
    for layout in LAYOUTS:
        datasets += build_study(StudyOptions(style="philips_enhanced", enhanced_layout=layout,
                                             study_key=f"summary-{layout}"))
    write_datasets(datasets, tmp_path)
    paths = sorted(tmp_path.rglob("*.dcm"))
    fast_reads = _compare(paths, monkeypatch)
    assert fast_reads >= 20 * len(paths)  # the plain values did take the fast path


def test_summaries_of_the_real_study_and_pydicoms_test_files_are_pydicoms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(REAL.glob("*.dcm")) + sorted(PYDICOM_FILES.rglob("*.dcm"))
    assert len(paths) > 100
    assert _compare(paths, monkeypatch) > 0
