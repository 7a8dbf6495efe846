"""The sender writes each C-STORE's PDUs to the socket itself (pynetdicom_adapter.store_directly,
issue 28's time to result): checked against a strict peer built on the node's own upper layer,
which aborts on any PDU longer than it announced, and keeps every PDU and message it got."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.dsutils import split_dataset

from marrownode.net import pynetdicom_adapter as adapter
from marrownode.net import sender as sender_module
from marrownode.net.sender import OutgoingFile, SendError, SendResult, send_batch
from marrownode.net.ul import dimse, pdu
from marrownode.part10 import read_file_meta
from tests.integration.test_stranded_deliveries import _result_files


class StrictPeer:
    """A storage SCP for one association at a time: accepts every context in its first
    syntax, reads PDUs no longer than max_pdu (else records the error and aborts), answers
    each C-STORE with Success. mode "stall": after the A-ASSOCIATE-AC it reads nothing more;
    "misanswer": it answers a message ID that was not asked."""

    def __init__(self, max_pdu: int, mode: str = "strict") -> None:
        self.max_pdu, self.mode = max_pdu, mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        if mode == "stall":  # small buffers: a sender that keeps writing soon blocks
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
        self.listener.settimeout(0.1)  # stop() is seen between accepts
        self.port = self.listener.getsockname()[1]
        self.pdu_lengths: list[int] = []
        self.commands: list[dimse.Command] = []
        self.data_sets: list[bytes] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(None)
            with connection:
                try:
                    self._associate(connection)
                except (pdu.ProtocolError, pdu.PeerClosed, OSError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    with contextlib.suppress(OSError):
                        connection.sendall(pdu.abort(2, 0))

    def _associate(self, connection: socket.socket) -> None:
        pdu_type, body = pdu.read_pdu(connection, 0, time.monotonic() + 10)
        request = pdu.parse_associate_rq(body)
        results = tuple(pdu.ContextResult(c.context_id, pdu.ACCEPTANCE, c.transfer_syntaxes[0])
                        for c in request.contexts)
        accept = pdu.AssociateAccept(request, results, self.max_pdu, "1.2.3.4", "STRICT")
        connection.sendall(accept.encode())
        if self.mode == "stall":
            self._stop.wait(60)
            return
        assembler = dimse.MessageAssembler(accept.accepted)
        parts: list[bytes] = []
        while True:
            pdu_type, body = pdu.read_pdu(connection, self.max_pdu, time.monotonic() + 10)
            if pdu_type == pdu.A_RELEASE_RQ:
                connection.sendall(pdu.release_rp())
                return
            if pdu_type != pdu.P_DATA_TF:
                return
            self.pdu_lengths.append(len(body))
            for event in assembler.feed(body):
                if isinstance(event, dimse.CommandReceived):
                    self.commands.append(event.command)
                    continue
                parts.append(bytes(event.data))
                if event.last:
                    self.data_sets.append(b"".join(parts))
                    parts = []
                    command = self.commands[-1]
                    if self.mode == "misanswer":
                        command = dimse.Command({**command.elements, dimse.MESSAGE_ID: struct.pack(
                            "<H", command.message_id + 1)})
                    connection.sendall(pdu.p_data(event.context_id, dimse.response(command, 0),
                                                  True, request.max_pdu_length))


def _outgoing(entries: list[dict[str, str]]) -> list[OutgoingFile]:
    return [OutgoingFile(number, Path(e["path"]), e["sop_class_uid"], e["transfer_syntax_uid"])
            for number, e in enumerate(entries)]


def _sent(peer: StrictPeer, files: list[OutgoingFile], timeout: float) -> list[SendResult]:
    """files sent to peer in one batch; the peer is stopped after."""
    try:
        return send_batch(files, "127.0.0.1", peer.port, "STRICT", "MARROWNODE", timeout=timeout)
    finally:
        peer.stop()


@pytest.fixture
def direct_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The message IDs store_directly was called with."""
    calls: list[int] = []
    real = adapter.store_directly

    def counting(association: Any, path: Path, message_id: int, timeout: float) -> int | None:
        calls.append(message_id)
        return real(association, path, message_id, timeout)

    monkeypatch.setattr(sender_module, "store_directly", counting)
    return calls


@pytest.mark.parametrize("max_pdu", [4096, 16384, 0], ids=["4k", "16k", "unlimited"])
def test_each_result_goes_out_within_the_peers_pdu_limit_exactly_as_stored(
        tmp_path: Path, direct_calls: list[int], max_pdu: int) -> None:
    # 1.3 MB each: more than one block of PDUs (SEND_BLOCK_BYTES) per data set
    files = _outgoing(_result_files(tmp_path / "results", 3, rows=800))
    peer = StrictPeer(max_pdu)
    results = _sent(peer, files, timeout=10)
    assert peer.errors == []
    assert [(r.status, r.error) for r in results] == [(0, None)] * 3
    assert direct_calls == [1, 2, 3]  # written here, a message ID each
    assert [c.message_id for c in peer.commands] == [1, 2, 3]
    for file, command, received in zip(files, peer.commands, peer.data_sets, strict=True):
        encoded = file.path.read_bytes()
        _, start = split_dataset(file.path)  # where pynetdicom finds the data set
        assert received == encoded[start:]
        assert command.uid(dimse.AFFECTED_SOP_INSTANCE) in file.path.name
        assert command.uid(dimse.AFFECTED_SOP_CLASS) == file.sop_class_uid
        assert command.field == dimse.C_STORE_RQ and command.has_data_set
    if max_pdu:  # the peer's limit is met, and used: few, full PDUs
        assert max(peer.pdu_lengths) == max_pdu
    else:  # one PDU per block
        assert max(peer.pdu_lengths) == adapter.SEND_BLOCK_BYTES + 6


def test_without_the_privates_pynetdicom_sends_and_the_peer_gets_the_same(
        tmp_path: Path, direct_calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender_module, "can_store_directly", lambda association: False)
    files = _outgoing(_result_files(tmp_path / "results", 2, rows=200))
    peer = StrictPeer(16384)
    results = _sent(peer, files, timeout=10)
    assert [(r.status, r.error) for r in results] == [(0, None)] * 2 and direct_calls == []
    assert peer.data_sets == [f.path.read_bytes()[split_dataset(f.path)[1]:] for f in files]


def test_a_peer_that_stops_reading_costs_the_batch_its_timeout_and_no_more(
        tmp_path: Path, direct_calls: list[int]) -> None:
    """4 MB into a peer that reads nothing: the socket's buffers fill and the write would
    block for good; the network timeout ends it and the association is aborted."""
    files = _outgoing(_result_files(tmp_path / "results", 2, rows=1448))
    peer = StrictPeer(16384, mode="stall")
    outcome: list[Any] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: outcome.append(send_batch(
        files, "127.0.0.1", peer.port, "STRICT", "MARROWNODE", timeout=1.0)), daemon=True)
    worker.start()
    worker.join(30)
    elapsed = time.monotonic() - started
    peer.stop()
    assert not worker.is_alive(), "the sender is still blocked writing to a peer that reads nothing"
    (results,) = outcome
    assert [r.error for r in results] == [SendError.CONNECTION_LOST] * 2
    assert "TimeoutError" in results[0].detail or "timed out" in results[0].detail
    assert direct_calls == [1] and elapsed < 15


def test_an_answer_to_another_message_is_no_answer(tmp_path: Path,
                                                   direct_calls: list[int]) -> None:
    files = _outgoing(_result_files(tmp_path / "results", 2, rows=64))
    peer = StrictPeer(16384, mode="misanswer")
    results = _sent(peer, files, timeout=5)
    assert [r.error for r in results] == [SendError.CONNECTION_LOST] * 2
    assert direct_calls == [1]  # the association was aborted after the wrong answer


def test_the_file_meta_is_read_where_pydicom_reads_it(tmp_path: Path) -> None:
    (entry,) = _result_files(tmp_path, 1, rows=32)
    path = Path(entry["path"])
    encoded = path.read_bytes()
    meta = read_file_meta(encoded[:4096], len(encoded))
    assert meta is not None
    assert meta.data_set_start == split_dataset(path)[1]
    assert (meta.sop_class_uid, meta.transfer_syntax) == (entry["sop_class_uid"],
                                                          entry["transfer_syntax_uid"])
    assert meta.sop_instance_uid == entry["sop_instance_uid"]
    assert read_file_meta(encoded[:200], len(encoded)) is None  # the meta runs past the head
    assert read_file_meta(b"not DICOM" * 100, 900) is None
    assert read_file_meta(encoded[:meta.data_set_start], meta.data_set_start) is None


def test_the_store_request_is_a_command_the_receiver_parses() -> None:
    command = dimse.Command.parse(dimse.store_request("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45",
                                                      70000))
    assert command.field == dimse.C_STORE_RQ and command.missing() == []
    assert command.message_id == 70000 & 0xFFFF and command.has_data_set
    assert command.uid(dimse.AFFECTED_SOP_INSTANCE) == "1.2.3.45"


def test_a_message_broken_off_part_way_spends_its_association(
        tmp_path: Path, direct_calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever stops a message after its first bytes went out (here a ValueError), the
    association is aborted: the next file never follows half a message on it."""

    def broken_off(sock: socket.socket, handle: Any, context_id: int, length: int,
                   command: bytes, max_pdu_length: int) -> None:
        sock.sendall(pdu.p_data(context_id, command, True, max_pdu_length))
        raise ValueError("stopped after the command")

    monkeypatch.setattr(adapter, "_write_message", broken_off)
    files = _outgoing(_result_files(tmp_path / "results", 2, rows=64))
    peer = StrictPeer(16384)
    results = _sent(peer, files, timeout=5)
    assert [r.error for r in results] == [SendError.CONNECTION_LOST] * 2
    assert "ValueError" in results[0].detail
    assert direct_calls == [1] and peer.data_sets == []
