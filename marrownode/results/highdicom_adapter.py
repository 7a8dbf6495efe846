"""Every use of highdicom's private parts, in one place, checked against the versions they were
verified on (as net/pynetdicom_adapter.py does for pynetdicom).

highdicom asks "does this IOD hold this attribute?" by walking every attribute of every
module of the IOD, each time: 0.6 ms a question, asked once per source image for each result
object (is_multiframe_image), 0.2 s of CPU per whole-body station. The answer depends only
on the standard's tables shipped with highdicom, so it is kept once asked."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import highdicom
from highdicom import _standard_utils

log = logging.getLogger(__name__)

#: highdicom minor versions (0.x) whose private function below was verified.
VERIFIED_VERSIONS = frozenset({(0, 28)})


def verified_version(version: str = highdicom.__version__) -> bool:
    """Whether this highdicom is one the private function below was verified on."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in VERIFIED_VERSIONS


def remember_iod_attributes() -> bool:
    """Make highdicom's is_attribute_in_iod keep its answers (its callers inside
    _standard_utils, is_multiframe_image and does_iod_have_pixel_data, look it up there).
    Returns False, changing nothing, when this highdicom lacks the function."""
    original = getattr(_standard_utils, "is_attribute_in_iod", None)
    if original is None or not callable(original):
        log.warning("event=highdicom_unverified version=%s detail=is_attribute_in_iod_missing",
                    highdicom.__version__)
        return False
    if hasattr(original, "cache_info"):
        return True  # already done
    _standard_utils.is_attribute_in_iod = _remembering(original)
    return True


def _remembering(original: Callable[..., bool]) -> Callable[..., bool]:
    @functools.lru_cache(maxsize=4096)
    def remembered(attribute: str, sop_class_uid: str,
                   exclude_path_elements: tuple[str, ...] | None) -> bool:
        return original(attribute, sop_class_uid, exclude_path_elements)

    @functools.wraps(original)
    def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                            exclude_path_elements: Sequence[str] | None = None) -> bool:
        excluded = None if exclude_path_elements is None else tuple(exclude_path_elements)
        return remembered(attribute, str(sop_class_uid), excluded)

    is_attribute_in_iod.cache_info = remembered.cache_info  # type: ignore[attr-defined]
    return is_attribute_in_iod


# Only on a verified highdicom: another may have changed what the function takes or means,
# and an unknown highdicom is better slower than wrong.
if verified_version():
    remember_iod_attributes()
else:  # pragma: no cover - depends on the installed version
    log.warning("event=highdicom_unverified version=%s detail=iod_answers_not_kept",
                highdicom.__version__)
