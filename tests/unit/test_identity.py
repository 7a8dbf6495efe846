"""The acknowledgement path's identity reader agrees with pydicom, or hands the file to it."""

from __future__ import annotations

import copy
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from marrownode.part10 import Identity, examine, read_identity
from marrownode.synthetic.phantom import spine_phantom
from marrownode.synthetic.studies import STYLES, StudyOptions, build_study, compress

SMALL = spine_phantom(slices=2, rows=64, cols=48)


def part10(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    ds = copy.deepcopy(ds)
    if transfer_syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian,
                           DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pydicom_identity(encoded: bytes) -> Identity:
    ds = dcmread(BytesIO(encoded), stop_before_pixels=True)
    return Identity(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                    str(ds.get("SOPClassUID", "")), str(ds.file_meta.TransferSyntaxUID),
                    str(ds.file_meta.MediaStorageSOPInstanceUID),
                    str(ds.file_meta.MediaStorageSOPClassUID))


def with_sequences(ds: Dataset, undefined: bool) -> Dataset:
    """Nested sequences before the Study UID, of undefined or defined length."""
    ds = copy.deepcopy(ds)
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "99X", "inner"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "2", "99X", "outer"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([item, copy.deepcopy(item)])
    ds.add_new(0x00091010, "LO", "private before the UIDs")
    for element in (ds["ProcedureCodeSequence"], item["PurposeOfReferenceCodeSequence"]):
        element.is_undefined_length = undefined
    for sequence_item in (*ds.ProcedureCodeSequence, inner):
        sequence_item.is_undefined_length_sequence_item = undefined
    return ds


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_and_plain_encoding_reads_as_pydicom_reads_it(style: str) -> None:
    datasets = build_study(StudyOptions(style=style, study_key=f"id-{style}"), SMALL)
    first = datasets[0]
    variants = [part10(first), part10(first, ImplicitVRLittleEndian),
                part10(compress([first], RLELossless)[0]),
                part10(compress([first], JPEG2000Lossless)[0])]
    for undefined in (True, False):
        variants += [part10(with_sequences(first, undefined)),
                     part10(with_sequences(first, undefined), ImplicitVRLittleEndian),
                     part10(with_sequences(first, undefined), ExplicitVRBigEndian)]
    for encoded in variants:
        assert read_identity(encoded) == pydicom_identity(encoded)


def test_big_endian_is_walked_and_deflate_is_named_for_inflation() -> None:
    """Big endian gets little endian's walk (issue 29): the same identity as pydicom reads;
    a deflated data set cannot be walked as it is: the walk says it must be inflated."""
    first = build_study(StudyOptions(study_key="id-other"), SMALL)[0]
    big = part10(first, ExplicitVRBigEndian)
    assert read_identity(big) == pydicom_identity(big)
    assert examine(big[:-10]).problem is not None  # cut inside Pixel Data
    deflated = examine(part10(first, DeflatedExplicitVRLittleEndian))
    assert deflated.deflated and deflated.identity is None and deflated.problem is None


def test_what_it_does_not_walk_is_left_to_pydicom() -> None:
    first = build_study(StudyOptions(study_key="id-other"), SMALL)[0]
    encoded = part10(first)
    assert read_identity(encoded[:400]) is None  # cut before the UIDs
    assert read_identity(b"\0" * 128 + b"NOPE" + encoded[132:]) is None
    no_series = copy.deepcopy(first)
    del no_series.SeriesInstanceUID
    assert read_identity(part10(no_series)) is None
    # An undefined-length sequence whose item runs into garbage before the Study UID.
    broken = part10(with_sequences(first, undefined=True))
    cut = broken.index(b"\xfe\xff\x0d\xe0")  # the first item delimiter
    assert read_identity(broken[:cut] + b"\x01\x02" * 40) is None


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian])
def test_a_data_set_cut_at_any_byte_is_refused_or_left_to_pydicom(syntax: str) -> None:
    """Cut anywhere after the meta, the walk never gives an identity nor raises: it names what
    is wrong, or (cut between two elements, before the UIDs) leaves the file to pydicom. Cut
    inside an element header, it says so, whatever VR bytes it can still see (each header is
    unpacked in one call)."""
    encoded = part10(build_study(StudyOptions(study_key="id-cut"), SMALL)[0], syntax)
    start = encoded.index(b"\x08\x00" if syntax != ExplicitVRBigEndian else b"\x00\x08", 144)
    named = 0
    for cut in range(start + 1, start + 600):
        examination = examine(encoded[:cut])
        assert examination.identity is None, cut
        named += examination.problem is not None
    assert named > 550  # all but the few cuts that fall between two elements
    for within in range(1, 8):  # 1-7 bytes of the first data set element's 8-byte header
        problem = examine(encoded[:start + within]).problem
        assert problem == "data set ends inside an element header", (within, problem)
