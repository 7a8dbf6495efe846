"""The running node for `marrownode serve`: everything wired in one place (Node.__init__),
then lifecycle, signals, systemd notify and watchdog."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from marrownode.actions import Operator
from marrownode.config import Settings
from marrownode.console.app import create_app
from marrownode.console.context import ConsoleContext
from marrownode.monitor import Health, HTTPService, Metrics, NodeCollector
from marrownode.net.receiver import Receiver
from marrownode.net.stats import ReceiverStats, shared_counters
from marrownode.receiving import IngestSink, ReceiverProcesses, open_ingestor, open_spool
from marrownode.report_shape import StudyShape
from marrownode.sdnotify import notify, watchdog_interval_seconds
from marrownode.services.assembler import Assembler, Lookups
from marrownode.services.deliverer import Deliverer
from marrownode.services.loop import Service
from marrownode.services.prior_finder import PriorFinder
from marrownode.services.retention import RetentionSweeper
from marrownode.services.retriever import Retriever
from marrownode.services.worker_pool import WorkerPool
from marrownode.store.database import IndexDamaged, index_path
from marrownode.store.index import Index
from marrownode.store.lock import StorageLock
from marrownode.webhooks import Webhooks

log = logging.getLogger(__name__)


class Node:
    """The running node: receiver, assembler, analysis worker, deliverer and retention around
    one spool and one index."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # First of all: nothing of the storage root is touched unless this node owns it.
        self.lock = StorageLock(settings.storage.root)
        self.spool = open_spool(settings)
        try:
            self.index = Index(index_path(settings.storage.root))
            self.index.db.check()  # a damaged index is named now, with the way out
        except BaseException:
            self.lock.release()
            raise
        self.ingestor = open_ingestor(self.spool, self.index.path,
                                      settings.storage.max_instance_mb)
        self.metrics = Metrics()
        extra = settings.node.receiver_processes - 1
        counters = shared_counters()  # one set for all receiving processes: exact metrics
        self.receiver = Receiver(settings.node, IngestSink(self.ingestor, self._association_ended),
                                 stats=ReceiverStats(counters, 0, extra + 1))
        self.receiver_processes = (
            ReceiverProcesses(settings, extra, counters, self._association_ended,
                              close_associations_of=self.index.studies.close_associations_of,
                              on_death=self.metrics.receiver_deaths.inc)
            if extra else None)
        self.metrics.registry.register(NodeCollector(
            self.receiver.stats, self.index.studies, self.index.outbox, self.spool,
            [d.name for d in settings.destinations]))
        self.webhooks = Webhooks(settings.webhooks, settings.node.ae_title)
        self.deliverer = Deliverer(settings, self.index.outbox, self.index.studies, self.spool,
                                   self.metrics, notify=self.webhooks.notify)
        self.worker = WorkerPool(  # [analysis] workers processes, one study each at a time
            settings, on_series=lambda message: self.assembler.series_written(message),
            on_death=self.metrics.worker_deaths.inc)
        self.priors = PriorFinder(settings, self.index.studies, self.ingestor,
                                  wake=lambda: self.assembler.wake())
        self.assembler = Assembler(
            settings, self.index.studies, self.ingestor, self.spool, self.worker,
            self.metrics.analysis_seconds.observe, on_series=self.deliverer.enqueue,
            on_analysed=self._analysed,
            count_failure=self.metrics.analysis_failures.inc,
            lookups=Lookups(retrieve=lambda study_uid: self.retriever.start(study_uid),
                            prior_for=self.priors.prior_for),
            notify=self.webhooks.notify)
        self.retriever = Retriever(settings, self.ingestor, self.index.studies,
                                   wake=self.assembler.wake)
        self.retention = RetentionSweeper(self.index.studies, self.spool,
                                          settings.storage.retention_hours)
        self.operator = Operator(self.index, self.spool, [d.name for d in settings.destinations],
                                 wake_deliverer=self.deliverer.wake,
                                 wake_assembler=self.assembler.wake)
        self.http = HTTPService(settings.http, create_app(
            self.health, self.metrics.registry, self.index.status_summary,
            ConsoleContext(settings, self.index, self.operator, self.health, self.facts)
            if settings.http.console else None)) if settings.http.enabled else None
        #: Started in this order, stopped in reverse.
        self.services: list[Service] = [self.assembler, self.deliverer, self.retention,
                                        self.priors]
        #: Damage met inside the index while serving: the node stops and `serve` exits 3.
        self.damage: IndexDamaged | None = None
        for loop in (self.assembler, self.deliverer, self.retention):
            loop.on_damage = self._index_damaged
        if self.http is not None:
            self.services.append(self.http)
        self._stop = threading.Event()
        self._started = False

    def _analysed(self, study_uid: str, report: StudyShape) -> None:
        """A study's analysis is recorded: its delivery can finish, and its follow-up
        (later studies it is the prior of; the PACS, when no prior was found) begins."""
        self.deliverer.analysis_finished(study_uid, report)
        self.priors.analysed(study_uid, report)

    def _association_ended(self, association_id: str) -> None:
        self.assembler.wake()  # a study may now be complete

    def start(self) -> None:
        """Recover the spool, listen, start the services, tell systemd we are ready."""
        removed, reindexed = self.ingestor.recover()
        closed = self.index.studies.close_stale_associations()
        log.info(
            "event=recovered temp_files_removed=%d reindexed=%d stale_associations=%d "
            "instances=%d", removed, reindexed, closed, self.index.studies.instance_count(),
        )
        self.webhooks.start()
        self.receiver.start()
        if self.receiver_processes is not None:
            self.receiver_processes.start(self.receiver.listening_socket)
        for service in self.services:
            service.start()
        self._started = True
        notify(f"READY=1\nSTATUS=listening on port {self.receiver.port}\nMAINPID={os.getpid()}")
        interval = watchdog_interval_seconds()
        if interval is not None:
            threading.Thread(
                target=self._watchdog, args=(interval,), name="watchdog", daemon=True
            ).start()

    def health(self) -> Health:
        """Listener bound, index writable, disk above the watermark."""
        bound = self._started and self.receiver.listening and (
            self.receiver_processes is None or self.receiver_processes.alive())
        free = self.spool.free_bytes()
        silence = self.worker.job_silence()
        stalled = self.index.outbox.stalled(time.time(), self.settings.outbox.stall_seconds)
        details: dict[str, Any] = {
            "free_bytes": free, "min_free_bytes": self.spool.min_free_bytes,
            "worker_pid": self.worker.pid(), "worker_deaths": self.worker.deaths,
            "oldest_pending_seconds": self.index.outbox.oldest_pending()}
        if silence is not None:
            details["analysis_silent_seconds"] = round(silence[0], 1)
            details["analysis_stage"] = silence[1]
        if stalled:
            details["stalled_destinations"] = stalled
        return Health(
            listener_bound=bound,
            index_writable=self.index.writable(),
            disk_above_watermark=free >= self.spool.min_free_bytes,
            analysis_worker=not self._started or self.worker.alive(),
            analysis_progressing=silence is None
            or silence[0] < self.settings.analysis.stall_seconds,
            deliveries_progressing=not stalled,
            details=details,
        )

    def facts(self) -> dict[str, Any]:
        """What the console's overview shows of the receivers and the analysis worker."""
        stats = self.receiver.stats
        return {
            "receivers": {"port": self.receiver.port if self._started else None,
                          "processes": self.settings.node.receiver_processes,
                          "instances": stats.instances, "accepted": stats.accepted,
                          "rejected": stats.rejected, "failures": stats.failures},
            "worker": {"alive": self.worker.alive(), "pid": self.worker.pid(),
                       "pids": self.worker.pids(), "deaths": self.worker.deaths},
        }

    def _watchdog(self, interval: float) -> None:
        reported = ""
        while not self._stop.wait(interval):
            health = self.health()
            if health.serving:
                notify("WATCHDOG=1")
            failed = ",".join(name for name, ok in health.checks().items() if not ok)
            if failed != reported:  # one line per change, not one per interval
                if failed:
                    log.warning("event=unhealthy failed=%s", failed)
                else:
                    log.info("event=healthy")
                reported = failed

    def _index_damaged(self, exc: Exception) -> None:
        """Damage that the start-up check could not see (inside a row, a page SQLite meets
        later) is met at first use: the node stops, and `serve` exits 3 naming the file and
        `rebuild-index`."""
        if self.damage is None:
            self.damage = (exc if isinstance(exc, IndexDamaged)
                           else IndexDamaged(self.index.path, str(exc)))
        self.request_stop()

    def request_stop(self, *_: Any) -> None:
        """Ask serve_forever to stop (signal handler)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a stop is requested; True if it was."""
        return self._stop.wait(timeout)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop listening, let associations finish within the grace, then stop the services."""
        notify("STOPPING=1")
        self._stop.set()
        log.info("event=stopping active_associations=%d", self.receiver.active_associations())
        if self.receiver_processes is not None:
            self.receiver_processes.request_stop(grace_seconds)  # all stop listening at once
        self.receiver.stop(grace_seconds)
        if self.receiver_processes is not None:
            self.receiver_processes.stop(grace_seconds)
        for service in reversed(self.services):
            service.stop()
        self.webhooks.stop()
        self._started = False
        log.info("event=stopped instances=%d", self.index.studies.instance_count())
        self.lock.release()

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
        if self.damage is not None:
            raise self.damage
