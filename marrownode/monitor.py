"""Health, Prometheus metrics and a JSON status over HTTP on a (loopback) port.

Counters that the receiving threads already keep, and gauges that the index knows, are read at
scrape time by a collector; the two histograms are observed where the work happens.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from marrownode import ALGORITHM_VERSION, __version__
from marrownode.config import HTTPSettings
from marrownode.net.receiver import ReceiverStats
from marrownode.states import PENDING_DELIVERY_STATES
from marrownode.store.outbox import Outbox
from marrownode.store.spool import Spool
from marrownode.store.studies import StudyIndex

log = logging.getLogger(__name__)

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
        yield GaugeMetricFamily("marrownode_spool_free_bytes", "Free bytes on the spool's disk",
                                value=self.spool.free_bytes())


@dataclass
class Health:
    """The node's health checks; /healthz answers 503 and the watchdog starves when not ok."""

    listener_bound: bool
    index_writable: bool
    disk_above_watermark: bool
    analysis_worker: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """All checks pass."""
        return (self.listener_bound and self.index_writable and self.disk_above_watermark
                and self.analysis_worker)


class _Handler(BaseHTTPRequestHandler):
    service: HTTPService

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("event=http_request line=%s", (format % args).replace(" ", "_"))

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            health = self.service.health()
            checks = {"listener_bound": health.listener_bound,
                      "index_writable": health.index_writable,
                      "disk_above_watermark": health.disk_above_watermark,
                      "analysis_worker": health.analysis_worker}
            body = {
                "healthy": health.ok,
                "checks": checks,
                "failed": [name for name, ok in checks.items() if not ok],
                **health.details,
            }
            self._send(200 if health.ok else 503, json.dumps(body).encode(), "application/json")
        elif path == "/metrics":
            self._send(200, generate_latest(self.service.registry), CONTENT_TYPE_LATEST)
        elif path == "/status":
            self._send(200, json.dumps(self.service.status()).encode(), "application/json")
        else:
            self._send(404, b'{"error": "not found"}', "application/json")


class HTTPService:
    """/healthz, /metrics and /status; started and stopped with the node."""

    def __init__(self, settings: HTTPSettings, health: Callable[[], Health],
                 registry: CollectorRegistry, status: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self.health = health
        self.registry = registry
        self.status = status
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Listen on [http] host and port."""
        handler = type("Handler", (_Handler,), {"service": self})
        self.server = ThreadingHTTPServer((self.settings.host, self.settings.port), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        daemon=True)
        self._thread.start()
        log.info("event=http_listening host=%s port=%d", self.settings.host, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
