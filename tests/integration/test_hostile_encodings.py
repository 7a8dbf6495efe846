"""Issue 29, point 1, 2 and 6: every transfer syntax gets little endian's guarantees. Big
endian is walked to its end; a deflated data set is inflated in bounded chunks, capped, and
stored inflated; sequences nest at most part10.MAX_NESTING deep; the disk is watched while an
instance streams in. Raw C-STOREs on real sockets (the sender does what no scanner does)."""

from __future__ import annotations

import logging
import struct
import threading
import zlib

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from marrownode.part10 import MAX_NESTING
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.integration.test_hostile_network import _element, _rss_mb, _uid, store_status
from tests.scu import RawRequestor

A_ASSOCIATE_AC = 0x02
MAX_PDU = 16382


def _c_store(sop_class: str, sop_instance: str, data_set: bytes) -> list[bytes]:
    """A C-STORE-RQ as P-DATA-TF PDUs within the negotiated maximum."""
    body = b"".join([
        _element(0x00000002, _uid(sop_class)), _element(0x00000100, struct.pack("<H", 1)),
        _element(0x00000110, struct.pack("<H", 7)), _element(0x00000700, struct.pack("<H", 2)),
        _element(0x00000800, struct.pack("<H", 0)), _element(0x00001000, _uid(sop_instance))])
    command = _element(0x00000000, struct.pack("<I", len(body))) + body

    def pdata(control: int, fragment: bytes) -> bytes:
        pdv = struct.pack(">IBB", len(fragment) + 2, 1, control) + fragment
        return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv

    step = MAX_PDU - 12
    pieces = [data_set[i:i + step] for i in range(0, len(data_set), step)] or [b""]
    return [pdata(0x03, command)] + [pdata(0x02 if i == len(pieces) - 1 else 0x00, piece)
                                     for i, piece in enumerate(pieces)]


def _store(port: int, transfer_syntax: str, sop_instance: str, data_set: bytes) -> int:
    raw = RawRequestor(port, timeout=60.0)
    try:
        raw.send(RawRequestor.associate_rq(MRImageStorage, transfer_syntax))
        assert raw.read_pdu()[0] == A_ASSOCIATE_AC
        return store_status(raw, b"".join(_c_store(MRImageStorage, sop_instance, data_set)))
    finally:
        raw.close()


def encode_explicit(dataset: Dataset, little: bool = True) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little, False
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _image(key: str) -> Dataset:
    return build_study(StudyOptions(study_key=key))[0]


def _kept(node) -> int:
    return len(list(node.spool.data_dir.rglob("*.dcm")))


def test_a_sound_big_endian_instance_is_stored(node_factory) -> None:
    node = node_factory()
    dataset = _image("big-endian")
    assert _store(node.receiver.port, ExplicitVRBigEndian, dataset.SOPInstanceUID,
                  encode_explicit(dataset, little=False)) == 0x0000
    assert node.index.studies.instance_count() == 1


@pytest.mark.parametrize("case", ["cut_inside_pixel_data", "trailing_garbage",
                                  "pixel_data_claims_2_gb"])
def test_unsound_big_endian_is_refused_and_nothing_kept(node_factory, case: str) -> None:
    """Before this issue each of these got 0x0000 and was stored (dciodvfy: Seek failed)."""
    node = node_factory()
    dataset = _image(f"big-endian-{case}")
    data = encode_explicit(dataset, little=False)
    if case == "cut_inside_pixel_data":
        data = data[:-100]
    elif case == "trailing_garbage":
        data += b"\x01\x02garbage"
    else:  # (7FE0,0010) OW, length 2 GB, 128 bytes present
        data = encode_explicit(_without_pixels(dataset), little=False) + (
            struct.pack(">HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 2**31) + b"\0" * 128)
    assert _store(node.receiver.port, ExplicitVRBigEndian, dataset.SOPInstanceUID,
                  data) == 0xC000
    assert _kept(node) == 0 and node.index.studies.instance_count() == 0


def _without_pixels(dataset: Dataset) -> Dataset:
    copy = Dataset()
    for element in dataset:
        if element.tag != 0x7FE00010:
            copy.add(element)
    return copy


def test_a_deflated_instance_is_stored_inflated_and_reads_back(node_factory) -> None:
    node = node_factory()
    dataset = _image("deflated")
    assert _store(node.receiver.port, DeflatedExplicitVRLittleEndian, dataset.SOPInstanceUID,
                  deflate_raw(encode_explicit(dataset))) == 0x0000
    (path,) = node.spool.data_dir.rglob("*.dcm")
    stored = dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert stored.SOPInstanceUID == dataset.SOPInstanceUID
    assert (stored.pixel_array == dataset.pixel_array).all()


def test_deflate_bombs_are_refused_in_bounded_memory(node_factory, caplog) -> None:
    """Four associations at once, each 64 MB of zeros deflated to about 64 KB, against a
    16 MB limit: 0xA700 for each, one log line each, nothing kept, and the node's memory
    grows by a few megabytes (it used to inflate the whole data set, twice)."""
    node = node_factory(storage={"max_instance_mb": 16})
    dataset = _without_pixels(_image("bomb"))
    header = encode_explicit(dataset)
    bomb = deflate_raw(header + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 64 * 2**20)
                    + b"\0" * (64 * 2**20))
    before = _rss_mb()
    statuses: list[int] = []
    caplog.set_level(logging.WARNING)

    def send() -> None:
        statuses.append(_store(node.receiver.port, DeflatedExplicitVRLittleEndian,
                               dataset.SOPInstanceUID, bomb))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [0xA700] * 4
    assert _rss_mb() - before < 60
    assert _kept(node) == 0 and not list(node.spool.temp_dir.iterdir())
    lines = [r for r in caplog.records if "too_large" in r.getMessage()]
    assert len(lines) == 4 and not any(r.exc_info for r in caplog.records)


def test_a_cut_deflate_stream_is_0xc000_without_a_traceback(node_factory, caplog) -> None:
    node = node_factory()
    dataset = _image("cut-deflate")
    stream = deflate_raw(encode_explicit(dataset))
    caplog.set_level(logging.WARNING)
    assert _store(node.receiver.port, DeflatedExplicitVRLittleEndian, dataset.SOPInstanceUID,
                  stream[:len(stream) // 2]) == 0xC000
    assert _kept(node) == 0
    assert not any(r.exc_info for r in caplog.records)
    assert any("deflate_unsound" in r.getMessage() for r in caplog.records)


def _nested(depth: int, key: str) -> tuple[str, bytes]:
    """An image whose Content Sequence nests `depth` deep (a Code Value at the bottom), as
    pydicom would encode it (explicit VR little endian, defined lengths), built directly:
    pydicom's writer takes 10 s for 2,000 levels. Its SOP Instance UID and bytes."""
    dataset = _without_pixels(_image(key))
    assert max(dataset.keys()) < 0x0040A730  # the sequence goes last
    nested = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"1 "
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(nested)) + nested
        nested = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
    return dataset.SOPInstanceUID, encode_explicit(dataset) + nested


@pytest.mark.parametrize(("depth", "status"), [(8, 0x0000), (MAX_NESTING + 10, 0xC000),
                                               (2000, 0xC000)])
def test_nesting_is_bounded(node_factory, caplog, depth: int, status: int) -> None:
    """Sequences 2,000 deep used to raise RecursionError (0x0110 and a 222 KB traceback per
    C-STORE); 300 deep were stored and could not be summarised. Now: refused, one line."""
    node = node_factory()
    sop_uid, data = _nested(depth, f"nested-{depth}")
    caplog.set_level(logging.WARNING)
    assert _store(node.receiver.port, ExplicitVRLittleEndian, sop_uid, data) == status
    assert not any(r.exc_info for r in caplog.records)
    if status:
        assert [r for r in caplog.records if "nested_deeper" in r.getMessage()]


def test_the_disk_is_watched_while_an_instance_streams_in(node_factory) -> None:
    """Free space is fine when the instance opens and falls below the watermark while its
    40 MB stream in: 0xA700, and the partial file is gone."""
    node = node_factory()
    spool = node.spool
    calls = {"n": 0}

    def probe(_path) -> int:
        calls["n"] += 1
        return 10 * 2**40 if calls["n"] <= 1 else 0  # room at the start, then none

    spool.free_space_probe = probe
    dataset = _without_pixels(_image("streaming-disk"))
    data = encode_explicit(dataset) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0,
                                          40 * 2**20) + b"\0" * (40 * 2**20)
    assert _store(node.receiver.port, ExplicitVRLittleEndian, dataset.SOPInstanceUID,
                  data) == 0xA700
    assert calls["n"] >= 2  # checked again while streaming, not only at the start
    assert _kept(node) == 0 and not list(spool.temp_dir.iterdir())
