"""Wires the services for `marrownode serve`: lifecycle, signals, systemd notify and watchdog."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marrownode.config import Settings
from marrownode.monitor import Metrics
from marrownode.net.receiver import Receiver, ReceiverStats, shared_counters
from marrownode.sdnotify import notify, watchdog_interval_seconds
from marrownode.store.index import Index
from marrownode.store.ingest import Ingestor
from marrownode.store.spool import Spool

log = logging.getLogger(__name__)


@dataclass
class Health:
    listener_bound: bool
    index_writable: bool
    disk_above_watermark: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.listener_bound and self.index_writable and self.disk_above_watermark


def open_spool(settings: Settings) -> Spool:
    settings.storage.root.mkdir(parents=True, exist_ok=True)
    return Spool(settings.storage.root, settings.storage.min_free_mb * 1024 * 1024)


def open_store(settings: Settings) -> tuple[Spool, Index]:
    return open_spool(settings), Index(settings.storage.root / "index.sqlite3")


def open_ingestor(spool: Spool, index_path: Path) -> Ingestor:
    """The ingest side of the store. Its index connection commits without waiting for the disk
    (synchronous NORMAL): the acknowledged spool file is fsynced, and start-up recovery indexes
    any file whose row a power loss took. Everything else commits with FULL durability."""
    return Ingestor(spool, Index(index_path, synchronous="NORMAL"))


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
    receiver = Receiver(node_settings, open_ingestor(open_spool(settings),
                                                     settings.storage.root / "index.sqlite3"),
                        on_association_end=notices.put, stats=ReceiverStats(counters),
                        shared_port=True)
    receiver.start()
    notices.put(("listening", os.getpid()))
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
            if isinstance(notice, tuple):
                listening += 1
            else:  # an association that ended while the others were starting
                self.on_association_end(notice)
        self._reader = threading.Thread(target=self._read_notices, name="receiver-notices",
                                        daemon=True)
        self._reader.start()

    def _read_notices(self) -> None:
        while True:
            notice = self._notices.get()
            if notice is None:
                return
            if isinstance(notice, str):
                self.on_association_end(notice)

    def alive(self) -> bool:
        return all(process.is_alive() for process in self._processes)

    def request_stop(self, grace_seconds: float) -> None:
        """Tell every process to stop listening and finish its associations within grace."""
        self._grace_seconds.value = grace_seconds
        self._stop.set()

    def stop(self, grace_seconds: float) -> None:
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


class Node:
    """The running node: receiver, assembler, analysis workers and sender around one index."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool, self.index = open_store(settings)
        self.ingestor = open_ingestor(self.spool, self.index.path)
        extra = settings.node.receiver_processes - 1
        counters = shared_counters()  # one set for all receiving processes: exact metrics
        self.receiver = Receiver(settings.node, self.ingestor, self._association_ended,
                                 stats=ReceiverStats(counters), shared_port=extra > 0)
        self.receiver_processes = (
            ReceiverProcesses(settings, extra, counters, self._association_ended)
            if extra else None)
        self._stop = threading.Event()
        self._started = False
        self._services: list[Any] = []
        #: Called with the association id when a sender releases or aborts (assembler wake-up).
        self.association_listeners: list[Callable[[str], None]] = []
        self.metrics = Metrics()
        self.metrics.attach(self)

    # Services that run beside the receiver (assembler, sender, http) register here.
    def add_service(self, service: Any) -> None:
        self._services.append(service)

    def delivery_failures(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for service in self._services:
            for key, count in getattr(service, "failures", {}).items():
                merged[key] = merged.get(key, 0) + count
        return merged

    def _association_ended(self, association_id: str) -> None:
        for listener in self.association_listeners:
            listener(association_id)

    def start(self) -> None:
        removed, reindexed = self.ingestor.recover()
        closed = self.index.close_stale_associations()
        log.info(
            "event=recovered temp_files_removed=%d reindexed=%d stale_associations=%d "
            "instances=%d", removed, reindexed, closed, self.index.instance_count(),
        )
        self.receiver.start()
        if self.receiver_processes is not None:
            self.receiver_processes.start(self.receiver.port)
        for service in self._services:
            service.start()
        self._started = True
        notify(f"READY=1\nSTATUS=listening on port {self.receiver.port}\nMAINPID={os.getpid()}")
        interval = watchdog_interval_seconds()
        if interval is not None:
            threading.Thread(
                target=self._watchdog, args=(interval,), name="watchdog", daemon=True
            ).start()

    def health(self) -> Health:
        bound = self._started and self.receiver.listening and (
            self.receiver_processes is None or self.receiver_processes.alive())
        writable = self.index.writable()
        free = self.spool.free_bytes()
        return Health(
            listener_bound=bound,
            index_writable=writable,
            disk_above_watermark=free >= self.spool.min_free_bytes,
            details={"free_bytes": free, "min_free_bytes": self.spool.min_free_bytes},
        )

    def _watchdog(self, interval: float) -> None:
        while not self._stop.wait(interval):
            health = self.health()
            if health.ok:
                notify("WATCHDOG=1")
            else:
                log.warning("event=unhealthy listener=%s index=%s disk=%s",
                            health.listener_bound, health.index_writable,
                            health.disk_above_watermark)

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def stop(self, grace_seconds: float = 10.0) -> None:
        notify("STOPPING=1")
        self._stop.set()
        log.info("event=stopping active_associations=%d", self.receiver.active_associations())
        if self.receiver_processes is not None:
            self.receiver_processes.request_stop(grace_seconds)  # all stop listening at once
        self.receiver.stop(grace_seconds)
        if self.receiver_processes is not None:
            self.receiver_processes.stop(grace_seconds)
        for service in reversed(self._services):
            service.stop()
        self._started = False
        log.info("event=stopped instances=%d", self.index.instance_count())

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT; the server is non-blocking so shutdown cannot deadlock."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()
