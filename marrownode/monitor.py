"""Health checks, Prometheus metrics, and the [http] listener that serves them with the console.

Counters that the receiving threads already keep, and gauges that the index knows, are read at
scrape time by a collector; the two histograms are observed where the work happens.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from marrownode import ALGORITHM_VERSION, __version__
from marrownode.config import HTTPSettings
from marrownode.net.stats import ReceiverStats
from marrownode.states import PENDING_DELIVERY_STATES
from marrownode.store.outbox import Outbox
from marrownode.store.spool import Spool
from marrownode.store.studies import StudyIndex

log = logging.getLogger(__name__)
#: The largest request body the listener reads (console forms are a few hundred bytes).
MAX_REQUEST_BODY = 64 * 1024

DURATION_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 10, 15, 30, 60, 120, 300, 600)


class Metrics:
    """One registry per node (no global state, so tests can run several nodes)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.analysis_seconds = Histogram(
            "marrownode_analysis_duration_seconds",
            "Wall time of one study's analysis in the worker process",
            buckets=DURATION_BUCKETS, registry=self.registry)
        self.time_to_result_seconds = Histogram(
            "marrownode_time_to_result_seconds",
            "From a study's last received instance to its results accepted by a destination",
            ["destination"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.delivered = Counter(
            "marrownode_delivered", "Result files accepted by a destination",
            ["destination"], registry=self.registry)
        self.delivery_failures = Counter(
            "marrownode_delivery_failures", "Failed delivery attempts by destination",
            ["destination"], registry=self.registry)
        Info("marrownode_build", "Version of the node and of its analysis",
             registry=self.registry).info({"version": __version__,
                                           "algorithm_version": ALGORITHM_VERSION})
        self.analysis_failures = Counter(
            "marrownode_analysis_failures",
            "Analyses that failed or ended the worker process (retried or failed for good)",
            registry=self.registry)
        self.receiver_deaths = Counter(
            "marrownode_receiver_process_deaths",
            "Extra receiving processes that ended unasked and were replaced",
            registry=self.registry)
        self.worker_deaths = Counter(
            "marrownode_worker_deaths",
            "Analysis worker processes that ended unasked and were replaced",
            registry=self.registry)


class NodeCollector(Collector):
    """Counters and gauges read at scrape time from what the node already keeps."""

    def __init__(self, stats: ReceiverStats, studies: StudyIndex, outbox: Outbox, spool: Spool,
                 destinations: Sequence[str]) -> None:
        self.stats = stats
        self.studies = studies
        self.outbox = outbox
        self.spool = spool
        self.destinations = destinations

    def collect(self) -> Iterator[Any]:
        """One family per metric (prometheus_client's collector protocol)."""
        stats = self.stats
        yield CounterMetricFamily("marrownode_instances_received",
                                  "Instances stored and acknowledged", value=stats.instances)
        yield CounterMetricFamily("marrownode_bytes_received",
                                  "Bytes of instances stored and acknowledged", value=stats.bytes)
        associations = CounterMetricFamily("marrownode_associations",
                                           "Incoming associations by result", labels=["result"])
        associations.add_metric(["accepted"], stats.accepted)
        associations.add_metric(["rejected"], stats.rejected)
        yield associations
        yield GaugeMetricFamily("marrownode_associations_open",
                                "Incoming associations open now, in every receiving process "
                                "(node.max_associations is the limit)",
                                value=stats.open_associations)
        connections = GaugeMetricFamily(
            "marrownode_receiver_connections",
            "Connections each receiving process holds now (0: the node's own); new ones go "
            "to the process holding the fewest", labels=["process"])
        for number, held in enumerate(stats.connections()):
            connections.add_metric([str(number)], held)
        yield connections
        failures = CounterMetricFamily("marrownode_cstore_failures",
                                       "C-STORE requests answered with a failure status",
                                       labels=["status"])
        for status, count in sorted(stats.failures.items()):
            failures.add_metric([f"0x{status:04X}"], count)
        yield failures
        studies = GaugeMetricFamily("marrownode_studies", "Studies by state", labels=["state"])
        for state, count in self.studies.count_by_state("studies").items():
            studies.add_metric([state], count)
        yield studies
        sets = GaugeMetricFamily("marrownode_dixon_sets", "Dixon sets by state",
                                 labels=["state"])
        for state, count in self.studies.count_by_state("dixon_sets").items():
            sets.add_metric([state], count)
        yield sets
        depth = GaugeMetricFamily("marrownode_outbox_depth",
                                  "Result files waiting to be delivered", labels=["destination"])
        outbox = self.outbox.counts()
        for name in self.destinations:
            counts = outbox.get(name, {})
            depth.add_metric([name], sum(counts.get(s, 0) for s in PENDING_DELIVERY_STATES))
        yield depth
        oldest = GaugeMetricFamily(
            "marrownode_outbox_oldest_pending_seconds",
            "Age of the oldest result not yet delivered or failed (grows when nothing moves)",
            labels=["destination"])
        ages = self.outbox.oldest_pending()
        for name in self.destinations:
            oldest.add_metric([name], ages.get(name, 0.0))
        yield oldest
        yield GaugeMetricFamily("marrownode_spool_free_bytes", "Free bytes on the spool's disk",
                                value=self.spool.free_bytes())


@dataclass
class Health:
    """The node's health checks; /healthz answers 503 and the watchdog starves when not ok."""

    listener_bound: bool
    index_writable: bool
    disk_above_watermark: bool
    analysis_worker: bool = True
    #: The running analysis has reported progress within [analysis] stall_seconds.
    analysis_progressing: bool = True
    #: No destination that answers has results stuck for [outbox] stall_seconds.
    deliveries_progressing: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def checks(self) -> dict[str, bool]:
        """Every check by name (/healthz, the console)."""
        return {"listener_bound": self.listener_bound, "index_writable": self.index_writable,
                "disk_above_watermark": self.disk_above_watermark,
                "analysis_worker": self.analysis_worker,
                "analysis_progressing": self.analysis_progressing,
                "deliveries_progressing": self.deliveries_progressing}

    @property
    def ok(self) -> bool:
        """All checks pass."""
        return all(self.checks().values())

    @property
    def serving(self) -> bool:
        """What the systemd watchdog is fed on: the process can receive, index and analyse.
        A stalled analysis or delivery shows on /healthz but does not restart the node (the
        time limit stops the one; a restart does not mend a hung peer)."""
        return (self.listener_bound and self.index_writable and self.disk_above_watermark
                and self.analysis_worker)


#: The HTTP listener's bounds: worker threads, connections served at once (more wait in
#: the listen backlog, not in memory), the backlog itself, and how long an idle or
#: trickling connection is kept.
HTTP_THREADS = 8
HTTP_CONNECTION_LIMIT = 64
HTTP_BACKLOG = 256
HTTP_IDLE_SECONDS = 30


class HTTPService:
    """The [http] listener: serves the WSGI application (console/app.py) with waitress, a
    production WSGI server: a fixed pool of threads whatever the number of connections, a
    cap on open connections and a real listen backlog; started and stopped with the node."""

    def __init__(self, settings: HTTPSettings, app: Callable[..., Any]) -> None:
        self.settings = settings
        self.app = app
        self.server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self.server is not None
        return int(self.server.effective_port)

    def start(self) -> None:
        """Listen on [http] host and port."""
        from waitress import create_server

        self.server = create_server(
            self.app, host=self.settings.host, port=self.settings.port, threads=HTTP_THREADS,
            connection_limit=HTTP_CONNECTION_LIMIT, backlog=HTTP_BACKLOG,
            channel_timeout=HTTP_IDLE_SECONDS, cleanup_interval=5, ident="marrownode",
            asyncore_loop_timeout=0.25,  # how soon stop() is noticed
            max_request_body_size=MAX_REQUEST_BODY, clear_untrusted_proxy_headers=True)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()
        log.info("event=http_listening host=%s port=%d", self.settings.host, self.port)

    def _serve(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # the map closed under it at stop
            self.server.run()

    def stop(self) -> None:
        """Stop accepting, close the open connections, end the threads."""
        server = self.server
        if server is None:
            return
        server.close()
        for channel in list(server._map.values()):
            channel.close()
        server.task_dispatcher.shutdown(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
