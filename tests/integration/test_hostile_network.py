"""The receive path against peers that are not well-behaved DICOM senders: raw sockets on
loopback, each case a failure the node used to have (issue: the receive path faces an
untrusted network)."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import LOOPBACK, wait_until
from tests.scu import RawRequestor, send

A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT = 0x02, 0x03, 0x07


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: str) -> bytes:
    encoded = value.encode("latin-1")
    return encoded + b"\0" * (len(encoded) % 2)


def c_store(sop_class: str | None, sop_instance: str | None, data_set: bytes,
            context_id: int = 1) -> bytes:
    """A C-STORE-RQ on one context as P-DATA-TF PDUs, with any command element left out or
    set to anything (command sets are implicit VR little endian, PS3.7 6.3.1)."""
    elements = []
    if sop_class is not None:
        elements.append(_element(0x00000002, _uid(sop_class)))
    elements += [_element(0x00000100, struct.pack("<H", 0x0001)),
                 _element(0x00000110, struct.pack("<H", 7)),
                 _element(0x00000700, struct.pack("<H", 2)),
                 _element(0x00000800, struct.pack("<H", 0x0000))]
    if sop_instance is not None:
        elements.append(_element(0x00001000, _uid(sop_instance)))
    body = b"".join(elements)
    command = _element(0x00000000, struct.pack("<I", len(body))) + body

    def pdata(control: int, fragment: bytes) -> bytes:
        pdv = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
        return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv

    return pdata(0x03, command) + pdata(0x02, data_set)


def encoded(dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def associated(port: int) -> RawRequestor:
    raw = RawRequestor(port)
    raw.send(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian))
    assert raw.read_pdu()[0] == A_ASSOCIATE_AC
    return raw


def store_status(raw: RawRequestor, request: bytes) -> int:
    raw.send(request)
    pdu_type, body = raw.read_pdu()
    assert pdu_type == 0x04, pdu_type
    command = body[6:]  # one PDV: length, context, control, then the command set
    position = 0
    while position < len(command):
        group, element, length = struct.unpack_from("<HHI", command, position)
        if (group, element) == (0x0000, 0x0900):
            return int(struct.unpack_from("<H", command, position + 8)[0])
        position += 8 + length
    raise AssertionError("no Status in the response")


@pytest.mark.parametrize("pdu_type", [0x01, 0x02, 0x03, 0x05, 0x06, 0x07, 0x04])
def test_a_pdu_claiming_gigabytes_is_aborted_before_its_body_is_read(node_factory,
                                                                      pdu_type: int) -> None:
    node = node_factory()
    raw = RawRequestor(node.receiver.port)
    raw.send(struct.pack(">BBI", pdu_type, 0, 0xFFFFFFF0) + b"\0" * 4096)
    reply, _ = raw.read_pdu()
    assert reply == A_ABORT  # at once: nothing is allocated for the claimed length
    raw.close()


def test_twenty_peers_streaming_fake_huge_pdus_leave_memory_bounded(node_factory) -> None:
    node = node_factory()
    before = _rss_mb()
    stop = time.monotonic() + 3.0
    streamed = []

    def stream() -> None:
        sent = 0
        try:
            with socket.create_connection((LOOPBACK, node.receiver.port), timeout=5) as sock:
                sock.sendall(struct.pack(">BBI", 0x07, 0, 0xFFFFFFF0))
                chunk = b"\xAB" * 65536
                while time.monotonic() < stop:
                    sock.sendall(chunk)
                    sent += len(chunk)
        except OSError:
            pass  # the node aborted and closed: what it should do
        streamed.append(sent)

    threads = [threading.Thread(target=stream) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert _rss_mb() - before < 60
    assert max(streamed) < 16 << 20  # each was cut off early, not read for seconds
    assert send(node.receiver.port, build_study(StudyOptions(study_key="after"))[:1]) == [0]


def test_a_trickling_peer_is_dropped_at_the_artim_deadline(node_factory) -> None:
    node = node_factory(node={"artim_timeout_seconds": 1.0, "network_timeout_seconds": 30})
    request = RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian)
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, node.receiver.port), timeout=10) as sock:
        try:
            for byte in request:  # one byte every 0.2 s: each read alone is quick
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass
        sock.settimeout(5)
        try:
            reply = sock.recv(6)
        except OSError:
            reply = b""
    assert time.monotonic() - started < 4.0  # 30 s per read would have kept it for minutes
    assert reply[:1] in (b"", bytes([A_ABORT]))


def test_connections_that_do_not_associate_are_capped_and_answered(node_factory) -> None:
    node = node_factory(node={"max_pending_connections": 3})
    idle = [socket.create_connection((LOOPBACK, node.receiver.port)) for _ in range(3)]
    wait_until(lambda: node.receiver._pending == 3, timeout=5)
    extra = RawRequestor(node.receiver.port)
    pdu_type, body = extra.read_pdu()
    assert pdu_type == A_ASSOCIATE_RJ and body[1:] == bytes([2, 3, 2])  # transient, local limit
    extra.close()
    for sock in idle:
        sock.close()
    wait_until(lambda: node.receiver._pending == 0, timeout=5)
    assert send(node.receiver.port, build_study(StudyOptions(study_key="capped"))[:1]) == [0]


@pytest.mark.parametrize("case, status", [
    ("no_instance_uid", 0xC000),
    ("no_class_uid", 0xC000),
    ("non_ascii_uid", 0xC000),
    ("class_not_the_context", 0xA900),
    ("data_set_class_differs", 0xA900),
    ("data_set_instance_differs", 0xA900),
])
def test_unsound_requests_get_a_failure_status_and_nothing_is_kept(node_factory, case: str,
                                                                   status: int) -> None:
    node = node_factory()
    dataset = build_study(StudyOptions(study_key=f"unsound-{case}"))[0]
    data = encoded(dataset)
    sop_class, sop_instance = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
    request = {
        "no_instance_uid": lambda: c_store(sop_class, None, data),
        "no_class_uid": lambda: c_store(None, sop_instance, data),
        "non_ascii_uid": lambda: c_store(sop_class, "1.2.3.\u00e9", data),
        "class_not_the_context": lambda: c_store("1.2.840.10008.5.1.4.1.1.2", sop_instance, data),
        "data_set_class_differs": lambda: c_store(sop_class, sop_instance, encoded(
            _with(dataset, SOPClassUID="1.2.840.10008.5.1.4.1.1.2"))),
        "data_set_instance_differs": lambda: c_store(sop_class, "1.2.3.4.5", data),
    }[case]()
    raw = associated(node.receiver.port)
    assert store_status(raw, request) == status
    assert store_status(raw, c_store(sop_class, sop_instance, data)) == 0  # still serving
    raw.close()
    wait_until(lambda: node.index.studies.instance_count() == 1, timeout=5)
    assert len(list(node.spool.data_dir.rglob("*.dcm"))) == 1


def _with(dataset, **values):
    import copy

    changed = copy.deepcopy(dataset)
    for keyword, value in values.items():
        setattr(changed, keyword, value)
    return changed


def _implicit(dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, dataset)
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["cut_in_half", "short_inside_pixel_data",
                                  "implicit_on_explicit_context", "trailing_garbage"])
def test_a_data_set_that_does_not_parse_to_its_end_is_refused(node_factory, case: str) -> None:
    """Success would tell the sender the instance is safe, and it would never resend it."""
    node = node_factory()
    dataset = build_study(StudyOptions(study_key=f"unsound-data-{case}"))[0]
    data = encoded(dataset)
    payload = {"cut_in_half": data[:len(data) // 2],
               "short_inside_pixel_data": data[:-100],
               "implicit_on_explicit_context": _implicit(dataset),
               "trailing_garbage": data + b"\x01\x02garbage-bytes"}[case]
    raw = associated(node.receiver.port)
    request = c_store(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), payload)
    assert store_status(raw, request) == 0xC000
    raw.close()
    assert node.index.studies.instance_count() == 0
    assert not list(node.spool.data_dir.rglob("*.dcm"))


@pytest.mark.parametrize("ids", [(1, 1), (2,), (1, 4)])
def test_even_or_duplicate_presentation_context_ids_are_aborted(node_factory, ids) -> None:
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    node = node_factory()
    request = A_ASSOCIATE_RQ()
    request.decode(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian))
    item = request.presentation_context[0]
    contexts = []
    for context_id in ids:
        clone = type(item)()
        clone.decode(item.encode())
        clone.presentation_context_id = context_id
        contexts.append(clone)
    request.variable_items = [request.variable_items[0], *contexts, request.variable_items[-1]]
    raw = RawRequestor(node.receiver.port)
    raw.send(request.encode())
    assert raw.read_pdu()[0] == A_ABORT
    raw.close()


def test_a_newline_in_an_ae_title_cannot_forge_a_log_line(node_factory, caplog) -> None:
    node = node_factory(node={"allowed_calling_aets": ["SCANNER"]})
    request = bytearray(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian))
    request[26:42] = b"X\nts=1 level=err"  # the Calling AE field (pynetdicom refuses to)
    with caplog.at_level(logging.INFO):
        raw = RawRequestor(node.receiver.port)
        raw.send(bytes(request))
        assert raw.read_pdu()[0] == A_ASSOCIATE_RJ
        raw.close()
        wait_until(lambda: any("association_rejected" in r.getMessage()
                               for r in caplog.records), timeout=5)
    messages = [r.getMessage() for r in caplog.records if "association_rejected" in r.getMessage()]
    assert messages and all("\n" not in m for m in messages)
    assert "X\\nts=1" in messages[0]


def test_an_unexpected_error_aborts_that_association_only(node_factory, caplog) -> None:
    node = node_factory()
    original = node.receiver.sink.association_opened

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    node.receiver.sink.association_opened = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        raw = RawRequestor(node.receiver.port)
        raw.send(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian))
        assert raw.read_pdu()[0] == A_ABORT
        raw.close()
    assert any("event=association_error" in r.getMessage() for r in caplog.records)
    node.receiver.sink.association_opened = original  # type: ignore[method-assign]
    assert send(node.receiver.port, build_study(StudyOptions(study_key="bug"))[:1]) == [0]


def test_associations_do_not_leak_descriptors(node_factory) -> None:
    node = node_factory()
    datasets = build_study(StudyOptions(study_key="leak"))[:1]
    assert send(node.receiver.port, datasets) == [0]  # warm: the node's own connections
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(25):
        assert send(node.receiver.port, datasets) == [0]
    wait_until(lambda: node.receiver.active_associations() == 0, timeout=10)
    time.sleep(0.5)
    assert len(os.listdir("/proc/self/fd")) - before < 5


def test_tls_with_a_ca_verifies_client_certificates(node_factory, tmp_path) -> None:
    """An administrator who configures a CA expects it to be enforced: a client with no
    certificate is not served, although require_client_cert was left at its default."""
    import ssl
    import subprocess

    key, cert = tmp_path / "node.key", tmp_path / "node.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    node = node_factory(node={"tls": {"cert": str(cert), "key": str(key), "ca": str(cert)}})
    assert node.settings.node.tls is not None and node.settings.node.tls.require_client_cert
    client = ssl.create_default_context(cafile=str(cert))
    client.check_hostname = False
    with (socket.create_connection((LOOPBACK, node.receiver.port), timeout=5) as sock,
          pytest.raises((ssl.SSLError, OSError)), client.wrap_socket(sock) as tls):
        tls.sendall(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian))
        if not tls.recv(6):
            raise OSError("closed without an answer")
    assert node.index.studies.instance_count() == 0


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def test_a_large_instance_is_received_in_bounded_memory(serve_process, tmp_path) -> None:
    """A 300 MB instance from DCMTK storescu: the node streams it to the spool PDU by PDU, so
    its peak memory stays far below the object's size (557 MB over idle before)."""
    import subprocess

    import numpy as np

    from tests.conftest import dcmtk_env, make_settings, require_binary

    dataset = build_study(StudyOptions(study_key="large"))[0]
    dataset.Rows = dataset.Columns = 2048
    frames = 36  # 36 x 2048 x 2048 x 2 bytes = 302 MB
    dataset.NumberOfFrames = frames
    dataset.PixelData = np.random.default_rng(0).integers(
        0, 4096, (frames, 2048, 2048), dtype=np.uint16).tobytes()
    large = tmp_path / "large.dcm"
    dataset.save_as(large, enforce_file_format=True)
    del dataset
    settings = make_settings(tmp_path / "data")
    server = serve_process(settings).start(port=settings.node.port)
    idle = _peak_rss_mb(server.process.pid)
    result = subprocess.run(
        [require_binary("/usr/bin/storescu"), "-aec", "MARROWNODE", "-xs", LOOPBACK,
         str(settings.node.port), str(large)],
        capture_output=True, text=True, timeout=300, env=dcmtk_env())
    assert result.returncode == 0, result.stderr
    peak = _peak_rss_mb(server.process.pid)
    assert peak - idle < 100, (idle, peak)
    stored = list((settings.storage.root / "spool").rglob("*.dcm"))
    assert len(stored) == 1 and stored[0].stat().st_size > 300_000_000
    server.stop()
