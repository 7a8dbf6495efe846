"""Issue 29, point 3: slow peers cannot starve ingest. Before: 40 sockets trickling a byte
every 5 s held the unassociated-connection slots until ARTIM, and 8 of 9 real storescu
attempts were refused in 90 s; every refused connection logged a line."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import threading
import time
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets
from tests.conftest import DCMTK, LOOPBACK, dcmtk_env, require_binary
from tests.scu import RawRequestor

#: The attacker's address: another host on the loopback network (Linux routes 127/8 locally).
ATTACKER = "127.0.0.2"


def _trickle(port: int, stop: threading.Event, count: int) -> None:
    """count sockets that send their A-ASSOCIATE-RQ a byte at a time, reopened as soon as the
    node closes them: the attack of the issue, from a host of its own."""
    request = RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian)
    open_sockets: list[tuple[socket.socket, int]] = []
    while not stop.is_set():
        while len(open_sockets) < count:
            with contextlib.suppress(OSError):
                open_sockets.append((socket.create_connection(
                    (LOOPBACK, port), timeout=2, source_address=(ATTACKER, 0)), 0))
        kept = []
        for sock, sent in open_sockets:
            try:
                sock.sendall(request[sent:sent + 1])
                kept.append((sock, sent + 1))
            except OSError:
                sock.close()
        open_sockets = kept
        stop.wait(0.5)
    for sock, _ in open_sockets:
        sock.close()


def test_a_scanner_gets_in_during_a_trickle_attack(node_factory, tmp_path: Path,
                                                   caplog) -> None:
    """40 trickling sockets from one host (more than the 32 unassociated slots), reopened as
    soon as they are closed, for the whole test: that host holds at most its share of the
    slots, so three storescu runs from the scanner all succeed, and the refusals and
    evictions make a handful of summary lines, not one per connection."""
    node = node_factory()
    port = node.receiver.port
    folder = tmp_path / "study"
    write_datasets(build_study(StudyOptions(study_key="under-attack"))[:4], folder)
    stop = threading.Event()
    caplog.set_level(logging.WARNING)
    attacker = threading.Thread(target=_trickle, args=(port, stop, 40), daemon=True)
    attacker.start()
    try:
        time.sleep(3.0)  # the slots are full of trickling sockets
        for _ in range(3):
            result = subprocess.run(
                [require_binary(str(DCMTK / "storescu")), "-aet", "SCANNER", "-aec",
                 "MARROWNODE", "+sd", LOOPBACK, str(port), str(folder)],
                env=dcmtk_env(), capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            time.sleep(1.0)
    finally:
        stop.set()
        attacker.join(10)
    assert node.index.studies.instance_count() == 4
    lines = [r for r in caplog.records if "connection_refused" in r.getMessage()
             or "connections_refused" in r.getMessage()]
    assert len(lines) <= 6, [r.getMessage() for r in lines]


def test_the_association_request_must_arrive_whole_within_its_deadline(node_factory) -> None:
    """A byte every 0.3 s keeps each read quick but the whole request late: cut off at
    node.request_timeout_seconds from the connection."""
    node = node_factory(node={"request_timeout_seconds": 1.5, "artim_timeout_seconds": 30})
    request = RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian)
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, node.receiver.port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.3)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            sock.recv(6)
    assert time.monotonic() - started < 6.0  # (ARTIM alone would have allowed 30 s)


def test_unassociated_connections_are_capped_per_address(node_factory) -> None:
    """One address may hold node.max_pending_per_address waiting connections: a third one
    arriving at once is refused (A-ASSOCIATE-RJ, local limit); once the first has waited over
    a second, a newcomer takes its slot and the old one is closed."""
    from tests.conftest import wait_until

    node = node_factory(node={"max_pending_per_address": 2, "max_pending_connections": 32})
    port = node.receiver.port
    first = socket.create_connection((LOOPBACK, port), timeout=5)
    second = socket.create_connection((LOOPBACK, port), timeout=5)
    wait_until(lambda: node.receiver._pending == 2, timeout=5)
    refused = RawRequestor(port)
    assert refused.read_pdu()[0] == 0x03  # A-ASSOCIATE-RJ: both are younger than a second
    refused.close()
    time.sleep(1.2)
    newcomer = RawRequestor(port)
    newcomer.send(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian))
    assert newcomer.read_pdu()[0] == 0x02  # A-ASSOCIATE-AC: the oldest gave up its slot
    newcomer.close()
    first.settimeout(5)
    with contextlib.suppress(OSError):
        assert first.recv(64)[:1] in (b"", b"\x07")  # aborted or closed by the node
    second.close()
    first.close()
