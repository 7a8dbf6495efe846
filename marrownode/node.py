"""Wires the services for `marrownode serve`: lifecycle, signals, systemd notify and watchdog."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from marrownode.config import Settings
from marrownode.monitor import Metrics
from marrownode.net.receiver import Receiver
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


def open_store(settings: Settings) -> tuple[Spool, Index]:
    root = settings.storage.root
    root.mkdir(parents=True, exist_ok=True)
    spool = Spool(root, settings.storage.min_free_mb * 1024 * 1024)
    return spool, Index(root / "index.sqlite3")


class Node:
    """The running node: receiver, assembler, analysis workers and sender around one index."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool, self.index = open_store(settings)
        # The ingest connection commits without waiting for the disk (synchronous NORMAL): the
        # acknowledged spool file is fsynced, and start-up recovery indexes any file whose row
        # a power loss took. Everything else commits with FULL durability.
        self.ingestor = Ingestor(self.spool, Index(self.index.path, synchronous="NORMAL"))
        self.receiver = Receiver(settings.node, self.ingestor, self._association_ended)
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
        bound = self._started and self.receiver.listening
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
        self.receiver.stop(grace_seconds)
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
