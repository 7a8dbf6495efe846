"""Writing result instances as Part 10 files, the elements a series' instances share encoded
once.

The instances of a result series are siblings (common.sibling_instance): they share all but a
few elements of their template. pydicom encodes every element of every file again (with its
ambiguous-VR pass over the whole data set first), about 12 ms per derived MR slice or overlay
frame; here an element already encoded for the series is written from its bytes. The files
are byte for byte those pydicom writes (tests compare them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, validate_file_meta
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filewriter import (
    correct_ambiguous_vr,
    correct_ambiguous_vr_element,
    write_data_element,
    write_file_meta_info,
)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR, VR

from marrownode.store.spool import fsync_directory, missing_directories

#: Elements encoded to more bytes than this (pixel data) are written, never kept.
LARGEST_KEPT_BYTES = 64 * 1024
#: The transfer syntaxes written here; any other (deflated, encapsulated) goes to pydicom.
PLAIN_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

Element = DataElement | RawDataElement


class SeriesEncoder:
    """Writes the instances of one series; what they share is encoded once.

    Keeps each encoded element with the element itself (not its id, which Python may reuse
    once an object is gone), so a hit is the very element object that was encoded."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[Element, bytes]] = {}
        #: Folders a file was renamed into, and folders created, since make_durable.
        self._written_in: set[Path] = set()
        self._created: set[Path] = set()

    def write(self, dataset: Dataset, path: Path) -> None:
        """Atomic write: a reader (the sender, a PACS admin) never sees half a file. The file
        is durable; its name is once make_durable has run."""
        self._make_folder(path.parent)
        temp = path.with_suffix(".part")
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        if syntax in PLAIN_SYNTAXES:
            with open(temp, "wb") as handle:
                self._encode(dataset, handle, implicit=syntax == ImplicitVRLittleEndian)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            dataset.save_as(temp, enforce_file_format=True)
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temp, path)
        self._written_in.add(path.parent)

    def make_durable(self) -> None:
        """fsync every folder a file was renamed into and the parent of every folder created
        since the last call: the names survive a power loss. Once per series, before its
        entries are handed on (about 1 ms a folder; per file it would be hundreds a study)."""
        folders = self._written_in | {folder.parent for folder in self._created}
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            fsync_directory(folder)
        self._written_in.clear()
        self._created.clear()

    def _make_folder(self, folder: Path) -> None:
        if missing := missing_directories(folder):
            folder.mkdir(parents=True, exist_ok=True)
            self._created.update(missing)

    def _encode(self, dataset: Dataset, handle: BinaryIO, implicit: bool) -> None:
        """What pydicom's dcmwrite(enforce_file_format=True) writes for an uncompressed,
        undeflated syntax: preamble, file meta, then the data set in tag order."""
        meta = dataset.file_meta
        for meta_name, name in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
            value = dataset.get(name)
            if meta.get(meta_name) is None or (value and value != meta.get(meta_name)):
                setattr(meta, meta_name, value)
        validate_file_meta(meta, enforce_standard=True)
        if "PixelData" in dataset:
            dataset["PixelData"].is_undefined_length = False
        out = DicomFileLike(handle)
        out.is_implicit_VR, out.is_little_endian = implicit, True
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)
        encoding = dataset.get("SpecificCharacterSet", default_encoding)
        for tag in sorted(dataset.keys()):
            if tag.element == 0 and tag.group > 6:  # retired group lengths are not written
                continue
            element = dataset.get_item(tag)
            kept = self._kept.get(tag)
            if kept is not None and kept[0] is element:
                out.write(kept[1])
                continue
            _correct_ambiguous(element, dataset)
            element = dataset.get_item(tag)  # the pass may have replaced a raw element
            if _is_bulk(element):  # pixel data: straight to the file, no copy in between
                write_data_element(out, element, encoding)
                continue
            part = DicomBytesIO()
            part.is_implicit_VR, part.is_little_endian = implicit, True
            write_data_element(part, element, encoding)
            encoded = part.getvalue()
            if len(encoded) <= LARGEST_KEPT_BYTES:
                self._kept[tag] = (element, encoded)
            out.write(encoded)

def _is_bulk(element: Element) -> bool:
    """A byte value too large to keep (pixel data): encoding it to a buffer first would copy
    the pixels once more per file."""
    value = element.value
    return isinstance(value, bytes | bytearray) and len(value) > LARGEST_KEPT_BYTES


def _correct_ambiguous(element: Element, dataset: Dataset) -> None:
    """pydicom's ambiguous-VR pass (US or SS and the like), for one top-level element."""
    if element.VR == VR.SQ:
        for item in dataset[element.tag].value:
            correct_ambiguous_vr(item, True, [item, dataset])
    elif element.VR in AMBIGUOUS_VR:
        correct_ambiguous_vr_element(element, dataset, True, [dataset])


def write_dataset(dataset: Dataset, path: Path) -> None:
    """One instance written atomically and durably, name included (a series of one)."""
    encoder = SeriesEncoder()
    encoder.write(dataset, path)
    encoder.make_durable()
