"""The adapter that holds every pynetdicom private the sender relies on."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pynetdicom
import pytest

from marrownode.net import pynetdicom_adapter as adapter


@pytest.mark.parametrize("version, verified", [
    ("3.0.0", True), ("3.1.2", True), ("2.1.0", False), ("4.0.0", False), ("dev", False)])
def test_version_check(version: str, verified: bool) -> None:
    assert adapter.verified_version(version) is verified


def test_installed_pynetdicom_is_one_the_adapter_was_verified_on() -> None:
    """An upgrade past the verified versions fails here first: re-verify the privates below
    (park_reactor's attributes, the socket path, the chunked-send switch), then extend it."""
    assert adapter.verified_version(pynetdicom.__version__), pynetdicom.__version__


def test_send_files_as_stored_sets_pynetdicoms_switch() -> None:
    from pynetdicom import _config

    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = False
    try:
        adapter.send_files_as_stored()
        assert _config.STORE_SEND_CHUNKED_DATASET is True
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def test_disable_nagle_reaches_the_socket_or_says_it_cannot() -> None:
    class Transport:
        def __init__(self) -> None:
            self.socket = socket.socket()

    class Association:
        def __init__(self) -> None:
            self.dul = type("DUL", (), {"socket": Transport()})()

    association = Association()
    try:
        assert adapter.disable_nagle(association)
        sock = association.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        association.dul.socket.socket.close()
    assert not adapter.disable_nagle(object())


@pytest.mark.parametrize("scu", ["send", "echo"])
@pytest.mark.parametrize("level, bound", [(logging.WARNING, False), (logging.DEBUG, True)])
def test_pdus_are_logged_only_when_debugging(tmp_path, monkeypatch, level: int, bound: bool,
                                             scu: str) -> None:
    """pynetdicom formats a log line for every PDU and DIMSE message its 'standard' handlers
    see; the node's logging drops them below DEBUG. Sending results (and a C-ECHO) binds them
    only when pynetdicom's logger keeps DEBUG (a real association to a stand-in PACS)."""
    import pynetdicom.association
    from pynetdicom import _config

    from marrownode.net.echo import echo
    from marrownode.net.sender import OutgoingFile, send_batch
    from marrownode.net.standin import StandInPACS
    from marrownode.synthetic.studies import StudyOptions, build_study

    result = tmp_path / "result.dcm"
    dataset = build_study(StudyOptions(style="siemens", study_key="pdu-log"))[0]
    dataset.save_as(result, enforce_file_format=True)

    seen: list[str] = []
    standard = pynetdicom.association.standard_pdu_sent_handler

    def counted(event: Any) -> Any:
        seen.append(type(event.pdu).__name__)
        return standard(event)

    monkeypatch.setattr(pynetdicom.association, "standard_pdu_sent_handler", counted)
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", _config.LOG_HANDLER_LEVEL)
    pynetdicom_log = logging.getLogger("pynetdicom")
    previous = pynetdicom_log.level
    pynetdicom_log.setLevel(level)  # (setLevel: the logger caches what it is enabled for)
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        if scu == "echo":
            assert echo("127.0.0.1", pacs.port, pacs.ae_title, "MARROWNODE") == 0
        else:
            (answer,) = send_batch([OutgoingFile(1, result, str(dataset.SOPClassUID),
                                                 str(dataset.file_meta.TransferSyntaxUID))],
                                   "127.0.0.1", pacs.port, pacs.ae_title, "MARROWNODE")
            assert answer.status == 0
    finally:
        pacs.stop()
        pynetdicom_log.setLevel(previous)
    # the SCU's own association (A-ASSOCIATE-RQ, its P-DATA, A-RELEASE-RQ) when bound
    assert ("A_ASSOCIATE_RQ" in seen) is bound, seen
