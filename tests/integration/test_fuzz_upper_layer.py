"""A seeded mutation fuzzer against the node's upper layer: valid A-ASSOCIATE-RQ and C-STORE
byte streams with bytes flipped, lengths rewritten, pieces cut or repeated. Bounded in count
and time. Whatever arrives, the node must not crash, must not leak threads or descriptors, and
every instance it indexed must be a readable DICOM file with consistent meta."""

from __future__ import annotations

import os
import random
import socket
import threading
import time

from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import LOOPBACK, wait_until
from tests.integration.test_hostile_encodings import deflate_raw, encode_explicit
from tests.integration.test_hostile_network import c_store, encoded
from tests.scu import RawRequestor, send

CASES = 300
SECONDS = 60.0


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.35 and buffer:  # flip bytes
            position = rng.randrange(len(buffer))
            buffer[position] = rng.randrange(256)
        elif choice < 0.55 and len(buffer) > 6:  # rewrite a 4-byte length somewhere
            position = rng.randrange(len(buffer) - 4)
            buffer[position:position + 4] = rng.choice(
                [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00",
                 rng.randbytes(4)])
        elif choice < 0.75:  # cut
            buffer = buffer[:rng.randrange(len(buffer) + 1)]
        elif choice < 0.9 and buffer:  # repeat a slice
            start = rng.randrange(len(buffer))
            buffer[start:start] = buffer[start:start + rng.randint(1, 64)]
        else:  # insert noise
            position = rng.randrange(len(buffer) + 1)
            buffer[position:position] = rng.randbytes(rng.randint(1, 32))
    return bytes(buffer)


def _exchange(port: int, payload: bytes) -> None:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=3) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    except OSError:
        pass  # refused, reset or aborted: all fine answers to garbage


def test_mutated_associations_and_stores_never_hurt_the_node(node_factory) -> None:
    node = node_factory(node={"artim_timeout_seconds": 2.0, "network_timeout_seconds": 2.0})
    port = node.receiver.port
    datasets = build_study(StudyOptions(study_key="fuzz"))[:3]
    # Every encoding: little endian, big endian (walked the same way) and deflated (inflated
    # in bounded chunks before the walk).
    encodings = {
        ExplicitVRLittleEndian: encoded,
        ExplicitVRBigEndian: lambda d: encode_explicit(d, little=False),
        DeflatedExplicitVRLittleEndian: lambda d: deflate_raw(encoded(d)),
    }
    variants = [(RawRequestor.associate_rq(MRImageStorage, syntax),
                 [c_store(str(d.SOPClassUID), str(d.SOPInstanceUID), encode(d))
                  for d in datasets]) for syntax, encode in encodings.items()]
    release = bytes.fromhex("05 00 00000004 00000000")
    assert send(port, datasets[:1]) == [0]  # warm: the node's own connections exist
    threads_before = threading.active_count()
    fds_before = len(os.listdir("/proc/self/fd"))
    rng = random.Random(20261125)
    deadline = time.monotonic() + SECONDS
    cases = 0
    while cases < CASES and time.monotonic() < deadline:
        associate, stores = rng.choice(variants)
        if rng.random() < 0.4:
            payload = _mutate(associate, rng)  # the request itself
        else:  # a sound request, then mutated messages
            payload = associate + _mutate(rng.choice(stores), rng) + release
        _exchange(port, payload)
        cases += 1
    assert cases >= 100
    wait_until(lambda: node.receiver.active_associations() == 0
               and node.receiver._pending == 0, timeout=15)
    time.sleep(0.5)
    assert threading.active_count() <= threads_before + 2
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 5
    assert send(port, datasets) == [0, 0, 0]  # and it still serves
    studies = [s["study_instance_uid"] for s in node.index.status()["studies"]]
    indexed = [row for uid in studies for row in node.index.studies.instances(uid)]
    assert len(indexed) >= 3
    for row in indexed:  # whatever got through is a sound, readable file
        stored = dcmread(row.path)
        assert stored.file_meta.MediaStorageSOPInstanceUID == stored.SOPInstanceUID
        assert stored.file_meta.MediaStorageSOPClassUID == stored.SOPClassUID
        assert stored.pixel_array.size > 0
    leftovers = list(node.spool.temp_dir.iterdir())
    assert leftovers == []
