"""The node's own DICOM upper layer (net/ul) against independent implementations:
DCMTK's echoscu and storescu, pynetdicom's requestor and PDU encoders, and a bare socket doing
what no well-behaved sender does."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)

from marrownode.net.ul.part10 import IMPLEMENTATION_CLASS_UID
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets
from tests.conftest import DCMTK, dcmtk_env, require_binary, wait_until
from tests.scu import RawRequestor, can_associate, send

A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_ABORT = 0x02, 0x03, 0x04, 0x07


def echoscu(port: int, calling: str, called: str = "MARROWNODE") -> str:
    result = subprocess.run(
        [require_binary(str(DCMTK / "echoscu")), "-v", "-aet", calling, "-aec", called,
         "127.0.0.1", str(port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).lower()


def test_dcmtk_reads_each_rejection_with_its_reason(node_factory) -> None:
    node = node_factory(node={"allowed_calling_aets": ["SCANNER1"], "max_associations": 1})
    port = node.receiver.port
    out = echoscu(port, "INTRUDER")
    assert "rejected permanent" in out and "calling ae title not recogni" in out, out
    out = echoscu(port, "SCANNER1", called="SOMEONE")
    assert "rejected permanent" in out and "called ae title not recogni" in out, out
    out = echoscu(port, "SCANNER1")
    assert "received echo response (success)" in out, out
    # echoscu has released; the node frees the slot as its thread ends (not before echoscu
    # exits): wait for it, or the holder below meets the limit meant for the next echoscu.
    wait_until(lambda: node.receiver.active_associations() == 0, timeout=10)
    holder = RawRequestor(port)
    holder.send(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian,
                                          calling="SCANNER1"))
    assert holder.read_pdu()[0] == A_ASSOCIATE_AC
    try:
        out = echoscu(port, "SCANNER1")
        assert "rejected transient" in out and "local limit exceeded" in out, out
    finally:
        holder.close()
    assert node.receiver.stats.rejected == 3


def test_contexts_are_negotiated_by_abstract_and_transfer_syntax(node_factory) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    node = node_factory()
    ae = AE(ae_title="NEGOTIATE")
    # Our preference decides, not the requestor's order: RLE is kept as sent.
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian, RLELossless])
    ae.add_requested_context(MRImageStorage, ["1.2.826.0.1.3680043.9.3811.77"])  # unknown TS
    ae.add_requested_context("1.2.826.0.1.3680043.9.3811.78")  # a private SOP class
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", node.receiver.port, ae_title="MARROWNODE")
    assert association.is_established
    try:
        accepted = {c.context_id: c for c in association.accepted_contexts}
        rejected = {c.context_id: c.result for c in association.rejected_contexts}
        assert accepted[1].transfer_syntax[0] == RLELossless
        assert rejected == {3: 0x04, 5: 0x03}
        assert accepted[7].abstract_syntax == Verification
        assert association.send_c_echo().Status == 0
    finally:
        association.release()


def test_small_pdus_from_storescu_are_stored_byte_for_byte(node_factory, tmp_path: Path) -> None:
    """With a 4 KB receive limit every 130 KB instance arrives in ~35 PDUs; the file written is
    the sender's data set byte for byte behind a valid Part 10 meta header of ours."""
    node = node_factory(node={"maximum_pdu_size": 4096})
    datasets = build_study(StudyOptions(study_key="small-pdus"))[:3]
    folder = tmp_path / "send"
    write_datasets(datasets, folder)
    result = subprocess.run(
        [require_binary(str(DCMTK / "storescu")), "-aet", "SCANNER", "-aec", "MARROWNODE",
         "+sd", "-xs", "127.0.0.1", str(node.receiver.port), str(folder)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for source in sorted(folder.iterdir()):
        original = dcmread(source)
        (row,) = [r for r in node.index.studies.instances(original.StudyInstanceUID)
                  if r.sop_instance_uid == original.SOPInstanceUID]
        stored = dcmread(row.path)
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert stored.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert stored.file_meta.SourceApplicationEntityTitle.strip() == "SCANNER"
        body = source.read_bytes()[132 + 12 + original.file_meta.FileMetaInformationGroupLength:]
        stored_bytes = Path(row.path).read_bytes()
        assert stored_bytes.endswith(body) and len(stored_bytes) - len(body) < 400
        check = subprocess.run([require_binary(str(DCMTK / "dcmftest")), row.path],
                               capture_output=True, text=True, timeout=60)
        assert check.stdout.startswith("yes:"), check.stdout


def test_abort_halfway_through_a_data_set_keeps_nothing_and_ends_the_association(
        node_factory) -> None:
    node = node_factory(completion={"idle_seconds": 600})
    dataset = build_study(StudyOptions(study_key="half"))[0]
    raw = RawRequestor(node.receiver.port)
    raw.send(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian))
    assert raw.read_pdu()[0] == A_ASSOCIATE_AC
    pdus = RawRequestor.c_store_pdus(dataset, max_pdu=1024)
    assert len(pdus) > 3
    for pdu in pdus[: len(pdus) // 2]:
        raw.send(pdu)
    raw.send(bytes([A_ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    raw.close()
    wait_until(lambda: node.receiver.active_associations() == 0, timeout=10)
    assert node.index.studies.instance_count() == 0 and not list(node.spool.temp_dir.iterdir())
    assert node.receiver.stats.instances == 0
    # The same instance over a clean association is stored: nothing was left half-done.
    assert send(node.receiver.port, [dataset]) == [0]
    assert node.index.studies.instance_count() == 1


def test_garbage_early_data_and_silence_are_aborted_and_the_node_keeps_serving(
        node_factory) -> None:
    node = node_factory(node={"network_timeout_seconds": 1.0, "artim_timeout_seconds": 1.0})
    port = node.receiver.port
    # Built before any connection: the ARTIM deadline runs from the connection, and building
    # a study on a busy machine can outlast it (the node then rightly aborts for silence).
    dataset = build_study(StudyOptions(study_key="early"))[0]
    first_pdu = RawRequestor.c_store_pdus(dataset)[0]
    # Not a PDU at all: A-ABORT, unrecognised PDU (reason 1).
    garbage = RawRequestor(port)
    garbage.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert garbage.read_pdu() == (A_ABORT, bytes([0, 0, 2, 1]))
    garbage.close()
    # Data before any association: A-ABORT, unexpected PDU (reason 2).
    early = RawRequestor(port)
    early.send(first_pdu)
    assert early.read_pdu() == (A_ABORT, bytes([0, 0, 2, 2]))
    early.close()
    # Silence: the ARTIM deadline closes the connection.
    silent = RawRequestor(port)
    started = time.monotonic()
    assert silent.read_pdu()[0] in (A_ABORT, 0)
    assert 0.8 < time.monotonic() - started < 10
    silent.close()
    # An association that goes silent after negotiation is aborted the same way.
    idle = RawRequestor(port)
    idle.send(RawRequestor.associate_rq(MRImageStorage, ImplicitVRLittleEndian))
    assert idle.read_pdu()[0] == A_ASSOCIATE_AC
    assert idle.read_pdu()[0] in (A_ABORT, 0)
    idle.close()
    wait_until(lambda: node.receiver.active_associations() == 0, timeout=10)
    assert can_associate(port)
    assert send(port, [dataset]) == [0]


def test_stop_aborts_an_association_held_past_the_grace(node_factory) -> None:
    node = node_factory()
    holder = RawRequestor(node.receiver.port)
    holder.send(RawRequestor.associate_rq(MRImageStorage, ExplicitVRLittleEndian))
    assert holder.read_pdu()[0] == A_ASSOCIATE_AC
    assert node.receiver.active_associations() == 1
    started = time.monotonic()
    node.receiver.stop(grace_seconds=0.5)
    assert holder.read_pdu()[0] in (A_ABORT, 0)
    assert time.monotonic() - started < 5
    assert node.receiver.active_associations() == 0
    holder.close()
