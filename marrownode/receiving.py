"""The receiving side of the node: the sink that turns received instances into spool files and
index rows (and ingest outcomes into DIMSE statuses), and the node's extra receiving processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marrownode.config import Settings
from marrownode.net.receiver import InstanceWriter, Receiver, ReceiverStats, StoreAnswer
from marrownode.net.ul.status import Status
from marrownode.store.database import index_path
from marrownode.store.index import Index
from marrownode.store.ingest import Ingestor, IngestResult
from marrownode.store.spool import IncomingFile, OutOfSpace, Spool

log = logging.getLogger(__name__)

#: The DIMSE status for each ingest result (PS3.4 B.2.3).
STATUS_FOR_RESULT: dict[IngestResult, Status] = {
    IngestResult.STORED: Status.SUCCESS,
    IngestResult.OUT_OF_SPACE: Status.OUT_OF_RESOURCES,
    IngestResult.MISMATCH: Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    IngestResult.UNREADABLE: Status.CANNOT_UNDERSTAND,
    IngestResult.WRITE_FAILED: Status.PROCESSING_FAILURE,
}


def open_spool(settings: Settings) -> Spool:
    """The spool under the storage root, with its free-space watermark."""
    settings.storage.root.mkdir(parents=True, exist_ok=True)
    return Spool(settings.storage.root, settings.storage.min_free_mb * 1024 * 1024)


def open_ingestor(spool: Spool, path: Path) -> Ingestor:
    """The ingest side of the store. Its index connection commits without waiting for the disk
    (synchronous NORMAL): the acknowledged spool file is fsynced, and start-up recovery indexes
    any file whose row a power loss took. Everything else commits with FULL durability."""
    return Ingestor(spool, Index(path, synchronous="NORMAL").studies)


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

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> None:
        """Record the association, so its studies wait until it ends."""
        self._record_ends()
        self.ingestor.studies.open_association(association_id, calling_ae, peer)

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


def on_parent_death(action: Callable[[], None], parent_pid: int,
                    interval_seconds: float = 0.5) -> None:
    """Run action (once) when the node process parent_pid is gone, so a node killed with
    SIGKILL leaves no receiving or analysing process behind. The pid comes from the node at
    spawn time: a child that starts after the node died is already re-parented."""

    def watch() -> None:
        while os.getppid() == parent_pid:
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


def _receiver_process(settings: Settings, port: int, counters: Any, notices: Any,
                      stop: Any, grace_seconds: Any, node_pid: int) -> None:
    """Entry point of an extra receiving process: a listener on the node's port, writing into
    the same spool and index, until the node (or its death, or a signal) says stop."""
    from marrownode.logs import configure_logging

    configure_logging(settings.logging)
    interrupted = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: interrupted.set())
    on_parent_death(interrupted.set, node_pid)
    node_settings = settings.node.model_copy(update={"port": port})
    ingestor = open_ingestor(open_spool(settings), index_path(settings.storage.root))
    sink = IngestSink(ingestor, lambda ended: notices.put(AssociationEnded(ended)))
    receiver = Receiver(node_settings, sink, stats=ReceiverStats(counters), shared_port=True)
    receiver.start()
    notices.put(Listening(os.getpid()))
    while not (stop.wait(0.5) or interrupted.is_set()):
        pass
    receiver.stop(grace_seconds.value)


class ReceiverProcesses:
    """The node's extra receiving processes (node.receiver_processes - 1 of them)."""

    start_timeout_seconds = 60.0

    def __init__(self, settings: Settings, count: int, counters: Any,
                 on_association_end: Callable[[str], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self.settings = settings
        self.count = count
        self.counters = counters
        self.on_association_end = on_association_end
        self._notices = context.Queue()
        self._stop = context.Event()
        self._grace_seconds = context.Value("d", 10.0)
        self._context = context
        self._processes: list[Any] = []
        self._reader: threading.Thread | None = None

    def start(self, port: int) -> None:
        """Start them all on port; OSError if one does not listen within the timeout."""
        self._processes = [
            self._context.Process(
                target=_receiver_process, name=f"marrownode-receiver-{i + 1}", daemon=False,
                args=(self.settings, port, self.counters, self._notices, self._stop,
                      self._grace_seconds, os.getpid()))
            for i in range(self.count)
        ]
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

    def _handle(self, notice: AssociationEnded) -> None:
        self.on_association_end(notice.association_id)

    def _read_notices(self) -> None:
        while (notice := self._notices.get()) is not None:
            if isinstance(notice, AssociationEnded):
                self._handle(notice)

    def alive(self) -> bool:
        """Whether every receiving process still runs."""
        return all(process.is_alive() for process in self._processes)

    def request_stop(self, grace_seconds: float) -> None:
        """Tell every process to stop listening and finish its associations within grace."""
        self._grace_seconds.value = grace_seconds
        self._stop.set()

    def stop(self, grace_seconds: float) -> None:
        """Stop them and wait; a process still running after the grace is killed."""
        self.request_stop(grace_seconds)
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
