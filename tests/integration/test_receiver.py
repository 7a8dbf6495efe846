"""The storage SCP over real associations on 127.0.0.1: pynetdicom and DCMTK as senders."""

from __future__ import annotations

import copy
import ssl
import subprocess
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

from marrownode.synthetic.phantom import spine_phantom
from marrownode.synthetic.studies import StudyOptions, build_study, compress, write_datasets
from tests.conftest import DCMTK, dcmtk_env, require_binary
from tests.scu import can_associate, send, send_raw


def large_study() -> list[Dataset]:
    """A 216-instance MR study: 54 slices x 4 Dixon contrasts, some RLE, some JPEG 2000."""
    phantom = spine_phantom(slices=54, rows=64, cols=48)
    datasets = build_study(StudyOptions(style="siemens", snr=40, study_key="big"), phantom)
    rle = compress(datasets[:20], RLELossless)
    j2k = compress(datasets[20:40], JPEG2000Lossless)
    return rle + j2k + datasets[40:]


def stored_pixels(path: str) -> np.ndarray:
    return dcmread(path).pixel_array


def test_pynetdicom_study_is_stored_bit_exact_and_indexed(node_factory) -> None:
    node = node_factory()
    datasets = large_study()
    assert len(datasets) >= 200
    statuses = send(node.receiver.port, datasets)
    assert statuses == [0] * len(datasets)
    study_uid = datasets[0].StudyInstanceUID
    # Acknowledged means on disk and indexed; the header summary comes after, off that path.
    node.ingestor.summarise_pending(study_uid)
    rows = {row.sop_instance_uid: row for row in node.index.studies.instances(study_uid)}
    assert len(rows) == len(datasets) == node.index.studies.instance_count()
    assert all(row.summarised for row in rows.values())
    assert node.ingestor.summarise_pending(study_uid) == 0
    for ds in datasets:
        row = rows[ds.SOPInstanceUID]
        assert row.transfer_syntax == ds.file_meta.TransferSyntaxUID
        assert Path(row.path).is_file()
        assert np.array_equal(stored_pixels(row.path), ds.pixel_array)
        # The header fields the assembler needs are in the index, per frame.
        assert row.header["frames"][0]["echo_time"] == pytest.approx(float(ds.EchoTime))
        assert row.header["image_type"] == list(ds.ImageType)
    assert not any(node.spool.temp_dir.iterdir())


def test_an_association_closes_with_the_count_of_what_it_stored(node_factory) -> None:
    """The association's row gets its instance count when it closes (the instances it
    delivered, counted then: nothing is counted on each C-STORE's commit). An instance re-sent
    in the same association counts once; sent again in a later one, it counts in both."""
    from tests.conftest import wait_until

    node = node_factory(completion={"idle_seconds": 600})
    datasets = build_study(StudyOptions(study_key="counted"))[:6]
    assert send(node.receiver.port, datasets + datasets[:2]) == [0] * 8
    assert send(node.receiver.port, datasets[5:]) == [0]

    def closed() -> list[tuple[int, float | None]]:
        return node.index.db.connection().execute(
            "SELECT instances, closed_at FROM associations ORDER BY opened_at").fetchall()

    wait_until(lambda: len(closed()) == 2 and all(row[1] for row in closed()), timeout=20)
    assert [row[0] for row in closed()] == [6, 1]


def test_dcmtk_storescu_and_echoscu(node_factory, tmp_path: Path) -> None:
    storescu = require_binary(str(DCMTK / "storescu"))
    echoscu = require_binary(str(DCMTK / "echoscu"))
    node = node_factory()
    port = str(node.receiver.port)
    echo = subprocess.run([echoscu, "-aec", "MARROWNODE", "127.0.0.1", port],
                          env=dcmtk_env(), capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    datasets = large_study()
    # Like a scanner: uncompressed files with the defaults, RLE with -xr, JPEG 2000 with -xv.
    for option, part in (("", datasets[40:]), ("-xr", datasets[:20]), ("-xv", datasets[20:40])):
        folder = tmp_path / (option or "plain")
        write_datasets(part, folder)
        command = [storescu, "-aet", "SCANNER", "-aec", "MARROWNODE", "+sd"]
        result = subprocess.run(
            [*command, *([option] if option else []), "127.0.0.1", port, str(folder)],
            env=dcmtk_env(), capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
    rows = node.index.studies.instances(datasets[0].StudyInstanceUID)
    assert len(rows) == len(datasets)
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    compressed = {row.transfer_syntax for row in rows}
    assert {RLELossless, JPEG2000Lossless} <= compressed
    for row in rows:
        assert np.array_equal(stored_pixels(row.path), by_uid[row.sop_instance_uid].pixel_array)


def test_repeated_instance_is_idempotent(node_factory) -> None:
    node = node_factory()
    datasets = build_study(StudyOptions(study_key="repeat"))[:3]
    assert send(node.receiver.port, datasets) == [0, 0, 0]
    assert send(node.receiver.port, datasets[:1]) == [0]
    assert node.index.studies.instance_count() == 3
    files = list(node.spool.data_dir.rglob("*.dcm"))
    assert len(files) == 3


def test_calling_ae_allow_list_and_called_ae(node_factory) -> None:
    node = node_factory(node={"allowed_calling_aets": ["SCANNER1"]})
    port = node.receiver.port
    assert not can_associate(port, calling="INTRUDER")
    assert can_associate(port, calling="SCANNER1")
    assert not can_associate(port, calling="SCANNER1", called="SOMEONEELSE")
    assert node.receiver.stats.rejected == 2
    # The refused peer did not stop the node from serving.
    assert send(port, build_study(StudyOptions(study_key="ok"))[:1], calling="SCANNER1") == [0]


def test_crafted_uids_stay_inside_the_spool(node_factory) -> None:
    """A command whose SOP Instance UID is no UID is refused (0xC000) before anything is
    written; crafted study and series UIDs inside the data set cannot leave the spool."""
    node = node_factory()
    base = build_study(StudyOptions(study_key="crafted"))[0]
    refused = copy.deepcopy(base)
    refused.SOPInstanceUID = refused.file_meta.MediaStorageSOPInstanceUID = "../../tmp/evil"
    assert send(node.receiver.port, [refused]) == [0xC000]
    assert node.index.studies.instance_count() == 0
    crafted = []
    for number, (study, series) in enumerate([("../../etc/x", "../.."),
                                              ("1.2." + "3" * 196, "/abs/path")]):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.{number}"
        crafted.append(ds)
    assert send(node.receiver.port, crafted) == [0, 0]
    spool = node.spool.data_dir.resolve()
    for ds in crafted:
        rows = node.index.studies.instances(ds.StudyInstanceUID)
        assert len(rows) == 1
        path = Path(rows[0].path).resolve()
        assert spool in path.parents and path.is_file()
        assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    assert len(list(node.spool.data_dir.rglob("*.dcm"))) == 2
    assert not Path("/tmp/evil").exists() and not (node.spool.root.parent / "etc").exists()


def test_watermark_answers_out_of_resources_and_leaves_nothing(node_factory) -> None:
    node = node_factory(storage={"min_free_mb": 1024 * 1024 * 1024})  # an exabyte: always short
    datasets = build_study(StudyOptions(study_key="full"))[:2]
    assert send(node.receiver.port, datasets) == [0xA700, 0xA700]
    assert node.index.studies.instance_count() == 0
    assert not list(node.spool.data_dir.rglob("*")) and not list(node.spool.temp_dir.iterdir())


def test_malformed_dataset_fails_cleanly_and_node_keeps_serving(node_factory) -> None:
    node = node_factory()
    good = build_study(StudyOptions(study_key="malformed"))[0]
    encoded = BytesIO()
    good.save_as(encoded, enforce_file_format=True)
    data = encoded.getvalue()
    body = data.index(b"\x08\x00\x05\x00")  # first element of the data set after the meta
    patient = data.index(b"\x10\x00\x10\x00")
    broken = [
        data[body:patient + 4] + b"\xff" * 32,  # truncated mid-element: no Study UID
        # A sequence with undefined length whose item runs into garbage
        data[body:patient] + b"\x10\x00\x20\x00SQ\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\x10\x00\x00\x00garbage",
    ]
    for payload in broken:
        status = send_raw(node.receiver.port, good.SOPClassUID, good.SOPInstanceUID, payload)
        assert status in (0xA900, 0xC000)
    assert node.index.studies.instance_count() == 0
    assert not list(node.spool.data_dir.rglob("*.dcm"))
    assert send(node.receiver.port, [good]) == [0]
    assert node.index.studies.instance_count() == 1


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "node.crt", folder / "node.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_tls_association_works_and_plaintext_fails(node_factory, tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    node = node_factory(node={"tls": {"cert": str(cert), "key": str(key)}})
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    client.check_hostname = False
    assert can_associate(node.receiver.port, ssl_context=client)
    assert send(node.receiver.port, build_study(StudyOptions(study_key="tls"))[:2],
                ssl_context=client) == [0, 0]
    assert not can_associate(node.receiver.port)
    assert node.index.studies.instance_count() == 2


def test_max_associations_refuses_the_one_too_many(node_factory) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    node = node_factory(node={"max_associations": 1})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", node.receiver.port, ae_title="MARROWNODE")
    assert held.is_established
    try:
        assert not can_associate(node.receiver.port)
        assert node.receiver.stats.rejected == 1
    finally:
        held.release()
    time.sleep(0.5)
    assert can_associate(node.receiver.port)


def test_a_second_receiving_process_stores_and_counts_on_its_own(node_factory) -> None:
    """With node.receiver_processes = 2, a spawned process listens on the same port: with the
    node's own listener closed, it alone accepts, stores, indexes and counts, and the node
    learns when its associations end."""
    node = node_factory(node={"receiver_processes": 2}, completion={"idle_seconds": 600})
    port = node.receiver.port
    assert node.health().listener_bound
    node.receiver.stop(grace_seconds=1.0)  # only the second process is listening now
    datasets = build_study(StudyOptions(study_key="second-process"))
    assert send(port, datasets) == [0] * len(datasets)
    study_uid = datasets[0].StudyInstanceUID
    rows = node.index.studies.instances(study_uid)
    assert len(rows) == len(datasets) and all(Path(r.path).is_file() for r in rows)
    assert node.receiver.stats.instances == len(datasets)  # one set of counters for all
    assert node.receiver.stats.accepted == 1
    # Complete by content once the association has ended; the idle timer (600 s) is not it.
    deadline = time.monotonic() + 30
    while (node.index.studies.study(study_uid) or {}).get("state") != "analysed":
        assert time.monotonic() < deadline, node.index.studies.study(study_uid)
        time.sleep(0.1)
    node.stop(grace_seconds=2.0)
    assert not can_associate(port), "no receiving process is left listening after stop"


def test_receiving_processes_share_out_new_associations_by_what_each_holds(node_factory,
                                                                          ) -> None:
    """node.receiver_processes = 2: each new association goes to the process holding the
    fewest connections, so twelve associations opened one after another are served about
    six and six, and after one process's associations end, the next ones all go to it.
    (The kernel's SO_REUSEPORT hash, used before, stays within two of even all along one
    time in four, and sends three new ones to one given process one time in eight.)"""
    from tests.conftest import wait_until
    from tests.scu import storage_ae

    node = node_factory(node={"receiver_processes": 2, "max_associations": 16})
    stats = node.receiver.stats
    ae = storage_ae("SCANNER")
    held: dict[int, list] = {0: [], 1: []}
    for _ in range(12):
        before = stats.connections()
        association = ae.associate("127.0.0.1", node.receiver.port, ae_title="MARROWNODE")
        assert association.is_established
        after = stats.connections()
        (taker,) = [n for n in (0, 1) if after[n] == before[n] + 1]
        held[taker].append(association)
        # the process with fewer took it (this test runs the node's own process, where
        # the test's threads share its interpreter: one late wake-up may tip one over)
        assert abs(after[0] - after[1]) <= 2, after
    assert abs(len(held[0]) - len(held[1])) <= 2
    for association in held[1]:
        association.release()
    wait_until(lambda: stats.connections() == [len(held[0]), 0], timeout=10)
    again = [ae.associate("127.0.0.1", node.receiver.port, ae_title="MARROWNODE")
             for _ in range(3)]
    assert all(a.is_established for a in again)
    assert stats.connections() == [len(held[0]), 3]
    metric = node.metrics.registry.get_sample_value
    assert metric("marrownode_receiver_connections", {"process": "1"}) == 3
    assert metric("marrownode_receiver_connections", {"process": "0"}) == len(held[0])
    for association in held[0] + again:
        association.release()
    wait_until(lambda: stats.connections() == [0, 0], timeout=10)


def _children(pid: int) -> list[int]:
    """A process's children, from each of its threads' lists (a thread that ended meanwhile
    has none left to give)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def test_receiving_processes_do_not_outlive_a_killed_node(serve_process, tmp_path) -> None:
    import os
    import signal

    from tests.conftest import make_settings, wait_for_port

    settings = make_settings(tmp_path / "data", node={"receiver_processes": 2})
    server = serve_process(settings).start(port=settings.node.port)
    deadline = time.monotonic() + 60
    while server.log.read_text().count("event=listening") < 2:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.1)
    wait_for_port(settings.node.port)
    assert server.process is not None
    children = _children(server.process.pid)
    assert len(children) >= 2  # the second receiving process, the analysis worker, ...
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    deadline = time.monotonic() + 15
    while alive := [pid for pid in children if Path(f"/proc/{pid}").exists()
                    and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]:
        assert time.monotonic() < deadline, [Path(f"/proc/{pid}/cmdline").read_bytes()[:120]
                                             for pid in alive]
        time.sleep(0.1)
    assert not can_associate(settings.node.port)
