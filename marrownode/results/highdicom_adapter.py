"""Every use of highdicom's private parts, in one place, checked against the versions they were
verified on (as net/pynetdicom_adapter.py does for pynetdicom).

highdicom asks "does this IOD hold this attribute?" by walking every attribute of every
module of the IOD, each time: 0.6 ms a question, asked once per source image for each result
object (is_multiframe_image), 0.2 s of CPU per whole-body station. The answer depends only
on the standard's tables shipped with highdicom, so it is kept once asked.

highdicom's SR constructor deep-copies the content tree it is given, then converts the copy
in place into its content item classes: about 0.25 s of CPU for a whole-body station's
report, a third of building it, and the conversion 0.1 s of the spine's. A tree built for
one report of highdicom's own content items and never used again (results/sr.py) is given
as it is, inside sr_content_taken_as_built: neither copied nor converted.

The same constructor looks for the images the content references (collect_evidence) with
highdicom's find_content_items, which builds a ContentItem and a CodedConcept for every node
of the tree to compare its value type: twice per report, about a third of the constructor.
Asked by value type alone, the node's ValueType is compared as it is."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import highdicom
import highdicom.sr.sop as _sr_sop
import highdicom.sr.utils as _sr_utils
from highdicom import _standard_utils
from highdicom.sr.enum import ValueTypeValues
from highdicom.sr.value_types import ContentItem
from pydicom.dataset import Dataset

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


#: The content trees (by id) highdicom's SR constructor takes as they are, while it runs.
_TAKEN_AS_BUILT: set[int] = set()


def _copy_unless_taken_as_built(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """highdicom.sr.sop's deepcopy: the value itself for a content tree given as built, a
    deep copy of anything else (SR documents read back, other callers)."""
    if id(value) in _TAKEN_AS_BUILT:
        return value
    return copy.deepcopy(value, memo)


@contextmanager
def sr_content_taken_as_built(content: Dataset) -> Iterator[None]:
    """Within the block, highdicom's SR constructor takes content as it is instead of a deep
    copy (and converts it in place): only for a tree built for this one report and not used
    again. Where the adapter is not installed, highdicom copies as it always did."""
    _TAKEN_AS_BUILT.add(id(content))
    try:
        yield
    finally:
        _TAKEN_AS_BUILT.discard(id(content))


def _typed_unless_taken_as_built(original: Callable[[Any], Any]) -> Callable[..., Any]:
    """ContentItem._from_dataset_derived, but a tree given as built, already of highdicom's
    content item classes all through, is its own conversion."""

    def from_dataset_derived(cls: type, dataset: Dataset) -> Any:
        if id(dataset) in _TAKEN_AS_BUILT and isinstance(dataset, ContentItem):
            return dataset
        return original(dataset)

    from_dataset_derived.as_built = True  # type: ignore[attr-defined]
    return from_dataset_derived


def take_sr_content_as_built() -> bool:
    """Make highdicom.sr.sop ask _TAKEN_AS_BUILT before it deep-copies. Returns False,
    changing nothing, when the module does not deep-copy with copy.deepcopy by that name."""
    current = getattr(_sr_sop, "deepcopy", None)
    if current is _copy_unless_taken_as_built:
        return True  # already done
    if current is not copy.deepcopy:
        log.warning("event=highdicom_unverified version=%s detail=sr_deepcopy_missing",
                    highdicom.__version__)
        return False
    setattr(_sr_sop, "deepcopy", _copy_unless_taken_as_built)  # noqa: B010 (a private name)
    derived = getattr(ContentItem, "_from_dataset_derived", None)
    if derived is not None and not getattr(derived, "as_built", False):
        ContentItem._from_dataset_derived = classmethod(  # type: ignore[method-assign,assignment]
            _typed_unless_taken_as_built(derived))
    return True


def _finding_by_value_type(original: Callable[..., list[Dataset]]
                           ) -> Callable[..., list[Dataset]]:
    @functools.wraps(original)
    def find_content_items(dataset: Dataset, name: Any = None, value_type: Any = None,
                           relationship_type: Any = None, recursive: bool = False,
                           ) -> list[Dataset]:
        if (name is not None or relationship_type is not None or value_type is None
                or "ContentSequence" not in dataset):  # (highdicom says what is missing)
            return original(dataset, name, value_type, relationship_type, recursive)
        return _of_value_type(dataset, ValueTypeValues(value_type).value, recursive)

    find_content_items.by_value_type = True  # type: ignore[attr-defined]
    return find_content_items


def _of_value_type(node: Dataset, wanted: str, recursive: bool) -> list[Dataset]:
    """highdicom's search_tree for a value type: the same items, in the same order."""
    found = []
    for item in node.ContentSequence:
        if item.ValueType == wanted:
            found.append(item)
        if recursive and "ContentSequence" in item:
            found += _of_value_type(item, wanted, recursive)
    return found


def find_by_value_type_as_given() -> bool:
    """Make highdicom.sr.utils.find_content_items compare value types as given when asked by
    value type alone (collect_evidence's question). Returns False, changing nothing, when the
    module lacks the function."""
    current = getattr(_sr_utils, "find_content_items", None)
    if current is None or not callable(current):
        log.warning("event=highdicom_unverified version=%s detail=find_content_items_missing",
                    highdicom.__version__)
        return False
    if getattr(current, "by_value_type", False):
        return True  # already done
    setattr(_sr_utils, "find_content_items",  # noqa: B010 (collect_evidence's own name)
            _finding_by_value_type(current))
    return True


# Only on a verified highdicom: another may have changed what the functions take or mean,
# and an unknown highdicom is better slower than wrong.
if verified_version():
    remember_iod_attributes()
    take_sr_content_as_built()
    find_by_value_type_as_given()
else:  # pragma: no cover - depends on the installed version
    log.warning("event=highdicom_unverified version=%s detail=iod_answers_not_kept,"
                "sr_content_copied", highdicom.__version__)
