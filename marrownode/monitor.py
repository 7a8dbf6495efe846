"""Health, Prometheus metrics and a JSON status over HTTP on a (loopback) port.

Counters that the receiving threads already keep, and gauges that the index knows, are read at
scrape time by a collector; the two histograms are observed where the work happens.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from marrownode.node import Node

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

    def attach(self, node: Node) -> None:
        self.registry.register(_NodeCollector(node))


class _NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        stats = self.node.receiver.stats
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
        index = self.node.index
        studies = GaugeMetricFamily("marrownode_studies", "Studies by state", labels=["state"])
        for state, count in index.count_by("studies", "state").items():
            studies.add_metric([state], count)
        yield studies
        sets = GaugeMetricFamily("marrownode_dixon_sets", "Dixon sets by state",
                                 labels=["state"])
        for state, count in index.count_by("dixon_sets", "state").items():
            sets.add_metric([state], count)
        yield sets
        depth = GaugeMetricFamily("marrownode_outbox_depth",
                                  "Result files waiting to be delivered", labels=["destination"])
        outbox = index.outbox_counts()
        for destination in self.node.settings.destinations:
            counts = outbox.get(destination.name, {})
            depth.add_metric([destination.name],
                             counts.get("queued", 0) + counts.get("sending", 0))
        yield depth
        delivery = CounterMetricFamily("marrownode_delivery_failures",
                                       "Failed delivery attempts by destination",
                                       labels=["destination"])
        per_destination: dict[str, int] = {}
        for key, count in self.node.delivery_failures().items():
            name = key.split(":", 1)[0]
            per_destination[name] = per_destination.get(name, 0) + count
        for name, count in sorted(per_destination.items()):
            delivery.add_metric([name], count)
        yield delivery
        yield GaugeMetricFamily("marrownode_spool_free_bytes", "Free bytes on the spool's disk",
                                value=self.node.spool.free_bytes())


class _Handler(BaseHTTPRequestHandler):
    node: Node

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
            health = self.node.health()
            checks = {"listener_bound": health.listener_bound,
                      "index_writable": health.index_writable,
                      "disk_above_watermark": health.disk_above_watermark}
            body = {
                "healthy": health.ok,
                "checks": checks,
                "failed": [name for name, ok in checks.items() if not ok],
                **health.details,
            }
            self._send(200 if health.ok else 503, json.dumps(body).encode(), "application/json")
        elif path == "/metrics":
            self._send(200, generate_latest(self.node.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/status":
            self._send(200, json.dumps(self.node.index.status()).encode(), "application/json")
        else:
            self._send(404, b'{"error": "not found"}', "application/json")


class HTTPService:
    """/healthz, /metrics and /status; started and stopped with the node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"node": self.node})
        http = self.node.settings.http
        self.server = ThreadingHTTPServer((http.host, http.port), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        daemon=True)
        self._thread.start()
        log.info("event=http_listening host=%s port=%d", self.node.settings.http.host, self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
