"""highdicom's "does this IOD hold this attribute?" is answered once and kept
(results/highdicom_adapter.py): the same answers as highdicom's own walk, asked again at no
cost, and the versions it was verified on are named."""

from __future__ import annotations

import inspect

from highdicom import _standard_utils
from pydicom import Dataset
from pydicom.uid import MRImageStorage

import marrownode.results  # noqa: F401  (installs the adapter)
from marrownode.results.highdicom_adapter import verified_version

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _walk() -> object:
    """highdicom's own function, under the adapter's cache."""
    return inspect.unwrap(_standard_utils.is_attribute_in_iod)


def test_answers_are_highdicoms_and_asked_once() -> None:
    remembered = _standard_utils.is_attribute_in_iod
    original = _walk()
    assert original is not remembered
    questions = [(attribute, sop_class, exclude)
                 for attribute in ("PerFrameFunctionalGroupsSequence", "PixelData",
                                   "FloatPixelData", "BodyPartExamined", "NoSuchKeyword")
                 for sop_class in (str(MRImageStorage), PARAMETRIC_MAP, SEGMENTATION,
                                   ENHANCED_MR, SECONDARY_CAPTURE)
                 for exclude in (None, ["IconImageSequence"])]
    for attribute, sop_class, exclude in questions:
        assert remembered(attribute, sop_class, exclude) == original(  # type: ignore[operator]
            attribute, sop_class, exclude), (attribute, sop_class, exclude)
    assert any(remembered(*q) for q in questions) and not all(remembered(*q) for q in questions)
    before = remembered.cache_info()  # type: ignore[attr-defined]
    image = Dataset()
    image.SOPClassUID = MRImageStorage
    for _ in range(3):
        assert _standard_utils.is_multiframe_image(image) is False
    after = remembered.cache_info()  # type: ignore[attr-defined]
    assert after.hits >= before.hits + 2  # asked three times: at most the first is walked


def test_verified_versions_are_named() -> None:
    assert verified_version("0.28.2")
    assert not verified_version("0.29.0")
    assert not verified_version("1.0")
    assert not verified_version("dev")
