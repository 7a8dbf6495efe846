"""The receiving side of the node: the sink that turns received instances into spool files and
index rows (and ingest outcomes into DIMSE statuses), and the node's extra receiving processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marrownode.config import Settings
from marrownode.net.receiver import Receiver
from marrownode.net.sink import InstanceWriter, StoreAnswer
from marrownode.net.stats import ReceiverStats
from marrownode.net.ul.status import Status
from marrownode.store.database import index_path
from marrownode.store.index import Index
from marrownode.store.ingest import Ingestor, IngestResult
from marrownode.store.spool import IncomingFile, OutOfSpace, Spool, disk_full

log = logging.getLogger(__name__)

#: The DIMSE status for each ingest result (PS3.4 B.2.3).
STATUS_FOR_RESULT: dict[IngestResult, Status] = {
    IngestResult.STORED: Status.SUCCESS,
    IngestResult.OUT_OF_SPACE: Status.OUT_OF_RESOURCES,
    IngestResult.MISMATCH: Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    IngestResult.UNREADABLE: Status.CANNOT_UNDERSTAND,
    IngestResult.WRITE_FAILED: Status.PROCESSING_FAILURE,
    IngestResult.TOO_LARGE: Status.OUT_OF_RESOURCES,
}


def open_spool(settings: Settings) -> Spool:
    """The spool under the storage root, with its free-space watermark."""
    settings.storage.root.mkdir(parents=True, exist_ok=True)
    return Spool(settings.storage.root, settings.storage.min_free_mb * 1024 * 1024)


def open_ingestor(spool: Spool, path: Path, max_instance_mb: int = 4096) -> Ingestor:
    """The ingest side of the store. Its index connection commits without waiting for the disk
    (synchronous NORMAL): the acknowledged spool file is fsynced, and start-up recovery indexes
    any file whose row a power loss took. Everything else commits with FULL durability."""
    return Ingestor(spool, Index(path, synchronous="NORMAL").studies,
                    max_instance_mb * 1024 * 1024)


class IngestSink:
    """The receiver's sink: ingest for instances, the index for association lifecycle, and a
    callback when an association ends (the assembler may now decide)."""

    def __init__(self, ingestor: Ingestor,
                 on_association_end: Callable[[str], None] | None = None) -> None:
        self.ingestor = ingestor
        self.on_association_end = on_association_end
        #: Associations whose end could not be written yet (index full or locked): written
        #: at the next association event, so none stays 'open' and holds its studies back.
        self._unrecorded_ends: set[str] = set()
        self._ends_lock = threading.Lock()
        self._refusing = False  # associations refused for a full disk (logged once)

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> bool:
        """Record the association, so its studies wait until it ends; False (refuse it) when
        the index cannot take the row because the disk is full (one log line per change)."""
        try:
            self._record_ends()
            self.ingestor.studies.open_association(association_id, calling_ae, peer)
        except Exception as exc:
            if not disk_full(exc):
                raise
            if not self._refusing:
                log.warning("event=associations_refused reason=disk_full")
            self._refusing = True
            return False
        if self._refusing:
            log.info("event=associations_accepted_again")
            self._refusing = False
        return True

    def open_instance(self, association_id: str) -> InstanceWriter | StoreAnswer:
        """A spool temp file for the arriving instance, or 0xA700 below the watermark."""
        try:
            return self.ingestor.spool.incoming()
        except OutOfSpace:
            log.warning("event=store_refused reason=disk_watermark association=%s",
                        association_id)
            return StoreAnswer(Status.OUT_OF_RESOURCES, "spool below free-space watermark")

    def store(self, written: InstanceWriter, association_id: str) -> StoreAnswer:
        """Ingest the instance just written and answer with the status for its outcome."""
        assert isinstance(written, IncomingFile)  # what open_instance handed out
        outcome = self.ingestor.store_file(written, association_id)
        return StoreAnswer(STATUS_FOR_RESULT[outcome.result], outcome.comment)

    def association_closed(self, association_id: str) -> None:
        """Record the end, close this association thread's index connection (the thread is
        about to end), then tell the node."""
        with self._ends_lock:
            self._unrecorded_ends.add(association_id)
        try:
            self._record_ends()
        finally:
            self.ingestor.studies.db.close()
        if self.on_association_end is not None:
            self.on_association_end(association_id)

    def _record_ends(self) -> None:
        with self._ends_lock:
            ends = sorted(self._unrecorded_ends)
        for association_id in ends:
            try:
                self.ingestor.studies.close_association(association_id)
            except sqlite3.Error as exc:
                log.error("event=association_end_unrecorded association=%s error=%s "
                          "detail=retried_at_the_next_association", association_id,
                          str(exc).replace(" ", "_"))
                return
            with self._ends_lock:
                self._unrecorded_ends.discard(association_id)


def store_encoded(ingestor: Ingestor, encoded: bytes) -> int:
    """Store one encoded instance (Part 10, as pynetdicom hands a retrieved one over) like a
    received one; the DIMSE status for the peer."""
    try:
        incoming = ingestor.spool.incoming()
    except OutOfSpace:
        return int(Status.OUT_OF_RESOURCES)
    incoming.write(encoded)
    return int(STATUS_FOR_RESULT[ingestor.store_file(incoming).result])


def on_parent_death(action: Callable[[], None], parent_pid: int,
                    interval_seconds: float = 0.5) -> None:
    """Run action (once) when the node process parent_pid is gone, so a node killed with
    SIGKILL leaves no receiving or analysing process behind. The pid comes from the node at
    spawn time: a child that starts after the node died is already re-parented. A child
    forked by the node's fork server (the analysis workers) has that server as its parent,
    which ends with the node: the child is re-parented then, and the node's pid is gone."""
    started_under = os.getppid()

    def node_alive() -> bool:
        if os.getppid() != started_under:
            return False  # whoever started this process is gone
        if started_under == parent_pid:
            return True
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        while node_alive():
            time.sleep(interval_seconds)
        action()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@dataclass(frozen=True)
class Listening:
    """A receiving process is listening."""

    pid: int


@dataclass(frozen=True)
class AssociationEnded:
    """An association served by a receiving process has ended."""

    association_id: str


def _receiver_process(settings: Settings, listening: socket.socket, number: int, counters: Any,
                      notices: Any, stop: Any, grace_seconds: Any, node_pid: int) -> None:
    """Entry point of an extra receiving process: accepting from the node's listening socket,
    writing into the same spool and index, until the node (or its death, or a signal) says
    stop."""
    from marrownode.logs import configure_logging

    configure_logging(settings.logging)
    interrupted = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: interrupted.set())
    on_parent_death(interrupted.set, node_pid)
    ingestor = open_ingestor(open_spool(settings), index_path(settings.storage.root),
                             settings.storage.max_instance_mb)
    sink = IngestSink(ingestor, lambda ended: notices.put(AssociationEnded(ended)))
    receiver = Receiver(settings.node, sink,  # accepts from listening: binds nothing
                        stats=ReceiverStats(counters, number, settings.node.receiver_processes),
                        listening_socket=listening)
    receiver.start()
    notices.put(Listening(os.getpid()))
    while not (stop.value or interrupted.wait(0.2)):
        pass
    receiver.stop(grace_seconds.value)


class ReceiverProcesses:
    """The node's extra receiving processes (node.receiver_processes - 1 of them), supervised:
    one that dies is replaced at once and its associations are closed in the index (their
    peers saw the connection drop and nothing unacknowledged was kept)."""

    start_timeout_seconds = 60.0
    check_seconds = 0.5

    def __init__(self, settings: Settings, count: int, counters: Any,
                 on_association_end: Callable[[str], None],
                 close_associations_of: Callable[[int], int] = lambda pid: 0,
                 on_death: Callable[[], None] = lambda: None) -> None:
        context = multiprocessing.get_context("spawn")
        self.settings = settings
        self.count = count
        self.counters = counters
        self.on_association_end = on_association_end
        self.close_associations_of = close_associations_of
        self.on_death = on_death
        self._notices = context.Queue()
        # A plain shared flag, not an Event: an Event's waiter killed mid-wait would make
        # the next set() wait for it forever (its condition counts sleepers).
        self._stop = context.RawValue("b", 0)
        self._grace_seconds = context.Value("d", 10.0)
        self._context = context
        self._processes: list[Any] = []
        #: The node's listening socket, held apart from the node's own receiver (a
        #: replacement inherits it even when that one has stopped listening).
        self._socket: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        #: Processes that ended unasked and were replaced (health and tests).
        self.deaths = 0

    def _process(self, number: int) -> Any:
        return self._context.Process(
            target=_receiver_process, name=f"marrownode-receiver-{number}", daemon=False,
            args=(self.settings, self._socket, number, self.counters, self._notices, self._stop,
                  self._grace_seconds, os.getpid()))

    def start(self, node_socket: socket.socket) -> None:
        """Start them all, accepting from the node's listening socket; OSError if one does not
        listen within the timeout."""
        self._socket = node_socket.dup()
        port = node_socket.getsockname()[1]
        self._processes = [self._process(i + 1) for i in range(self.count)]
        for process in self._processes:
            process.start()
        deadline = time.monotonic() + self.start_timeout_seconds
        listening = 0
        while listening < self.count:
            try:
                notice = self._notices.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                notice = None
            if notice is None or not all(p.is_alive() for p in self._processes):
                self.stop(0.0)
                raise OSError(f"a receiving process did not start listening on port {port}")
            if isinstance(notice, Listening):
                listening += 1
            else:
                self._handle(notice)
        self._reader = threading.Thread(target=self._read_notices, name="receiver-notices",
                                        daemon=True)
        self._reader.start()
        self._supervisor = threading.Thread(target=self._supervise, name="receiver-supervisor",
                                            daemon=True)
        self._supervisor.start()

    def _handle(self, notice: AssociationEnded) -> None:
        self.on_association_end(notice.association_id)

    def _read_notices(self) -> None:
        while (notice := self._notices.get()) is not None:
            if isinstance(notice, AssociationEnded):
                self._handle(notice)

    def _supervise(self) -> None:
        while not self._stopping.wait(self.check_seconds):
            for number, process in enumerate(self._processes, start=1):
                if process.is_alive() or self._stopping.is_set():
                    continue
                self._replace(number, process)

    def _replace(self, number: int, dead: Any) -> None:
        self.deaths += 1
        self.on_death()
        ReceiverStats(self.counters, number, self.count + 1).start_counting_associations()
        try:
            closed = self.close_associations_of(dead.pid)
        except Exception:  # the index is the node's problem to report; replace the process
            log.exception("event=receiver_associations_not_closed pid=%s", dead.pid)
            closed = 0
        log.error("event=receiver_process_died pid=%s exitcode=%s associations_closed=%d",
                  dead.pid, dead.exitcode, closed)
        replacement = self._process(number)
        try:
            replacement.start()
        except OSError as exc:
            log.error("event=receiver_process_start_failed error=%s", exc)
            return  # alive() is False meanwhile; the next round tries again
        self._processes[number - 1] = replacement
        log.info("event=receiver_process_started pid=%s", replacement.pid)

    def alive(self) -> bool:
        """Whether every receiving process runs (a dead one is replaced within a second)."""
        return all(process.is_alive() for process in self._processes)

    def request_stop(self, grace_seconds: float) -> None:
        """Tell every process to stop listening and finish its associations within grace."""
        self._stopping.set()
        self._grace_seconds.value = grace_seconds
        self._stop.value = 1

    def stop(self, grace_seconds: float) -> None:
        """Stop them and wait; a process still running after the grace is killed."""
        self.request_stop(grace_seconds)
        if self._supervisor is not None:
            self._supervisor.join(5.0)
        for process in self._processes:
            process.join(grace_seconds + 5.0)
            if process.is_alive():
                log.warning("event=receiver_process_killed pid=%s", process.pid)
                process.kill()
                process.join(5.0)
        if self._reader is not None:
            self._notices.put(None)
            self._reader.join(5.0)
            self._reader = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
