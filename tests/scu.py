"""A minimal pynetdicom storage SCU for tests: one association, per-instance statuses."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from marrownode.net.pynetdicom_adapter import park_reactor

LOOPBACK = "127.0.0.1"


def nodelay(association) -> None:
    """pynetdicom leaves Nagle on; every small PDU would then wait for a delayed ACK."""
    sock = association.dul.socket.socket
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def storage_ae(calling: str, datasets: Iterable[Dataset | Path] = ()) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    syntaxes: dict[str, set[str]] = {}
    for item in datasets:
        if isinstance(item, Path):
            continue
        syntaxes.setdefault(item.SOPClassUID, set()).add(item.file_meta.TransferSyntaxUID)
    for sop_class, transfer_syntaxes in syntaxes.items():
        for ts in transfer_syntaxes:
            ae.add_requested_context(sop_class, [ts])
    if not syntaxes:
        ae.requested_contexts = AllStoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    return ae


def send(
    port: int,
    datasets: list[Dataset] | list[Path],
    calling: str = "TESTSCU",
    called: str = "MARROWNODE",
    ssl_context: ssl.SSLContext | None = None,
) -> list[int]:
    """Send over one association; return each instance's status (0xFFFF if no response)."""
    ae = storage_ae(calling, datasets)
    tls_args = (ssl_context, "localhost") if ssl_context is not None else None
    association = ae.associate(LOOPBACK, port, ae_title=called, tls_args=tls_args)
    if not association.is_established:
        raise ConnectionRefusedError("association not established")
    nodelay(association)
    statuses = []
    try:
        for item in datasets:
            park_reactor(association)  # pynetdicom #875, as the product's sender does
            status = association.send_c_store(item)
            statuses.append(int(status.Status) if status else 0xFFFF)
    finally:
        association.release()
    return statuses


def can_associate(port: int, calling: str = "TESTSCU", called: str = "MARROWNODE",
                  ssl_context: ssl.SSLContext | None = None) -> bool:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    tls_args = (ssl_context, "localhost") if ssl_context is not None else None
    association = ae.associate(LOOPBACK, port, ae_title=called, tls_args=tls_args)
    established = association.is_established
    if established:
        association.release()
    return established


def send_raw(port: int, sop_class: str, sop_instance: str, payload: bytes,
             transfer_syntax: str = "1.2.840.10008.1.2.1") -> int:
    """Send arbitrary bytes as a C-STORE data set (a broken or hostile sender).

    pynetdicom's chunked-send mode streams a file's bytes after its meta header undecoded.
    """
    import tempfile
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    from marrownode.net.pynetdicom_adapter import send_files_as_stored

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
        handle.write(buffer.getvalue() + payload)
        handle.flush()
        ae = AE(ae_title="RAWSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(sop_class, [transfer_syntax])
        association = ae.associate(LOOPBACK, port, ae_title="MARROWNODE")
        assert association.is_established
        send_files_as_stored()  # the payload goes out as written, unsound or not
        try:
            status = association.send_c_store(Path(handle.name))
            return int(status.Status) if status else 0xFFFF
        finally:
            association.release()


class RawRequestor:
    """A requestor on a bare socket, its PDUs encoded by pynetdicom's PDU classes (not ours):
    for what no well-behaved sender does, such as aborting halfway through a data set."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes]:
        """(type, body) of the next PDU; (0, b'') once the node has closed the connection."""
        header = self._exact(6)
        if len(header) < 6:
            return 0, b""
        return header[0], self._exact(int.from_bytes(header[2:6], "big"))

    def _exact(self, length: int) -> bytes:
        data = b""
        while len(data) < length:
            chunk = self.sock.recv(length - len(data))
            if not chunk:
                break
            data += chunk
        return data

    @staticmethod
    def associate_rq(sop_class: str, transfer_syntax: str, called: str = "MARROWNODE",
                     calling: str = "RAWSCU") -> bytes:
        from pynetdicom.pdu import A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import (
            A_ASSOCIATE,
            ImplementationClassUIDNotification,
            MaximumLengthNotification,
        )
        from pynetdicom.presentation import build_context

        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title, primitive.called_ae_title = calling, called
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = 16382
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2"
        primitive.user_information = [maximum, implementation]
        context = build_context(sop_class, transfer_syntax)
        context.context_id = 1
        primitive.presentation_context_definition_list = [context]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(primitive)
        return pdu.encode()

    @staticmethod
    def c_store_pdus(dataset: Dataset, max_pdu: int = 16382) -> list[bytes]:
        """The P-DATA-TF PDUs of one C-STORE-RQ for dataset, on presentation context 1."""
        from io import BytesIO

        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset
        from pynetdicom.dimse_messages import C_STORE_RQ
        from pynetdicom.dimse_primitives import C_STORE
        from pynetdicom.pdu import P_DATA_TF

        encoded = DicomBytesIO()
        encoded.is_little_endian, encoded.is_implicit_VR = True, False  # the context's syntax
        write_dataset(encoded, dataset)
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = dataset.SOPClassUID
        request.AffectedSOPInstanceUID = dataset.SOPInstanceUID
        request.Priority = 2
        request.DataSet = BytesIO(encoded.getvalue())
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        pdus = []
        for primitive in message.encode_msg(1, max_pdu):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            pdus.append(pdu.encode())
        return pdus

    def close(self) -> None:
        self.sock.close()
