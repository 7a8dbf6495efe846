"""The services that run beside the receiver in `serve`.

Assembler: decides from the index when a study's Dixon sets are complete and hands the study to
an analysis worker *process*, so a large study never slows the receiving threads. Every decision
is written to the index before the next step starts.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marrownode.config import Settings
from marrownode.dixon.completion import NO_DIXON, READY, decide
from marrownode.node import Node

log = logging.getLogger(__name__)

ANALYSING, ANALYSED, FAILED, WAITING = "analysing", "analysed", "failed", "waiting"


#: In an analysis worker: the queue on which finished result series go to the node.
_series_queue: Any = None


def _worker_init(settings: Settings, node_pid: int, series_queue: Any) -> None:
    from marrownode.logs import configure_logging
    from marrownode.node import on_parent_death

    global _series_queue
    _series_queue = series_queue
    configure_logging(settings.logging)
    # An analysis cut short is re-run at the next start (the study is still 'analysing').
    on_parent_death(lambda: os._exit(1), node_pid)


def run_analysis(
    instances: list[tuple[str, dict[str, Any]]], settings: Settings, out_dir: str, run_id: str
) -> dict[str, Any]:
    """Worker-process entry point: the same pipeline function `process` uses. Each result
    series goes to the node as soon as it is written, tagged with run_id; (run_id, None) ends
    the run's series."""
    from marrownode.pipeline import SourceInstance, analyse_study

    sources = [SourceInstance(Path(path), header) for path, header in instances]
    try:
        return analyse_study(sources, settings, Path(out_dir),
                             on_outputs=lambda entries: _series_queue.put((run_id, entries)))
    finally:
        _series_queue.put((run_id, None))


def _patient_fields(path: str) -> str:
    """Patient name and ID for the log, only when logging.include_phi is switched on."""
    from pydicom import dcmread

    dataset = dcmread(path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
    name = str(dataset.get("PatientName", "")).replace(" ", "_")
    return f" patient_name={name} patient_id={dataset.get('PatientID', '')}"


def _warm_up(settings: Settings) -> int:
    """Analyse a tiny synthetic study in the fresh worker, so that the first real study pays
    none of the first-time costs (imports, highdicom's IOD tables, fonts): about 0.5 s of a
    spine study's time to result. Returns how many result files the rehearsal wrote."""
    import tempfile

    from marrownode.pipeline import analyse_study, discover
    from marrownode.synthetic.phantom import spine_phantom
    from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets

    with tempfile.TemporaryDirectory(prefix="marrownode-warm-up-") as folder:
        source, out = Path(folder) / "in", Path(folder) / "out"
        datasets = build_study(StudyOptions(style="siemens", study_key="warm-up"),
                               spine_phantom(slices=4, rows=48, cols=40))
        write_datasets(datasets, source)
        studies, _ = discover([source])
        pipeline_log = logging.getLogger("marrownode.pipeline")
        level = pipeline_log.level
        pipeline_log.setLevel(logging.WARNING)  # a rehearsal, not a study: keep it out of the log
        try:
            report = analyse_study(next(iter(studies.values())), settings, out)
        finally:
            pipeline_log.setLevel(level)
    return sum(len(s.get("outputs", [])) for s in report["dixon_sets"])


def _warmed_up(future: Future[int]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:  # the node still works; only the first study is slower
        log.warning("event=worker_warm_up_failed error=%s", type(error).__name__)
    else:
        log.info("event=worker_warmed_up outputs=%d", future.result())


class LoopService:
    """A background thread that runs step() every poll_seconds, or at once when woken."""

    name = "service"
    join_seconds = 10.0

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, now: float) -> None:
        raise NotImplementedError

    def wait_seconds(self) -> float:
        return self.poll_seconds

    def on_start(self) -> None:
        """Work done once before the loop starts."""

    def on_stop(self) -> None:
        """Work done once after the loop has ended."""

    def start(self) -> None:
        self.on_start()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.join_seconds)
        self.on_stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(time.time())
            except Exception:
                log.exception("event=%s_error", self.name)
            self._wake.wait(self.wait_seconds())
            self._wake.clear()


@dataclass
class _Run:
    """One analysis of one study in the worker, as the node follows it."""

    study_uid: str
    streamed: set[str] = field(default_factory=set)  # SOP UIDs already handed on
    ended: threading.Event = field(default_factory=threading.Event)


class Assembler(LoopService):
    """Completion decisions and analysis jobs, driven by the index."""

    name = "assembler"
    #: How long the end of a finished run's series may lag behind its result.
    series_lag_seconds = 30.0

    def __init__(self, node: Node, poll_seconds: float = 0.5, workers: int = 1) -> None:
        super().__init__(poll_seconds)
        self.node = node
        self.settings = node.settings
        self.index = node.index
        self._in_flight: dict[str, Future[dict[str, Any]]] = {}
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        context = multiprocessing.get_context("spawn")
        self._series_queue = context.Queue()
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_worker_init,
            initargs=(node.settings, os.getpid(), self._series_queue),
        )
        self._series_reader: threading.Thread | None = None
        #: Called with (study_uid, report entries) for each result series once it is written.
        self.series_listeners: list[Any] = []
        self.listeners: list[Any] = []  # called with (study_uid, report) after analysis

    def on_start(self) -> None:
        self._series_reader = threading.Thread(target=self._read_series, name="series",
                                               daemon=True)
        self._series_reader.start()
        self._pool.submit(_warm_up, self.settings).add_done_callback(_warmed_up)

    def on_stop(self) -> None:
        # In-flight analyses finish (they are idempotent); queued ones are dropped and, being
        # still 'analysing' in the index, are re-run after the next start.
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._series_queue.put(None)
        if self._series_reader is not None:
            self._series_reader.join(10.0)

    def _read_series(self) -> None:
        """Hand each written result series on at once (the deliverer sends it while the worker
        encodes the next)."""
        while (item := self._series_queue.get()) is not None:
            run_id, entries = item
            with self._lock:
                run = self._runs.get(run_id)
            if run is None:  # the warm-up rehearsal, or a run already given up on
                continue
            if entries is None:
                run.ended.set()
                continue
            self._hand_on(run, entries)

    def _hand_on(self, run: _Run, entries: list[dict[str, Any]]) -> None:
        run.streamed.update(e["sop_instance_uid"] for e in entries)
        for listener in self.series_listeners:
            try:
                listener(run.study_uid, entries)
            except Exception:
                log.exception("event=series_listener_error study=%s", run.study_uid)

    def step(self, now: float) -> None:
        idle = self.settings.completion.idle_seconds
        for study in self.index.studies_to_assess(now, idle):
            study_uid = study["study_uid"]
            with self._lock:
                if study_uid in self._in_flight:
                    continue
            self._assess(study, now, idle)

    def _assess(self, study: dict[str, Any], now: float, idle: float) -> None:
        study_uid, last, seen = study["study_uid"], study["last_received"], study["dirty"]
        open_associations = bool(self.index.open_association_ids(study_uid))
        if open_associations and now - last < idle:
            self.index.set_study_state(study_uid, WAITING, "sending association still open",
                                       if_last_received=last, seen_dirty=seen)
            return
        self.node.ingestor.summarise_pending(study_uid)
        rows = self.index.instances(study_uid)
        decision = decide([r.header for r in rows], open_associations, last, now, idle)
        self.index.record_sets(study_uid, decision.sets)
        if decision.state == READY:
            if not self.index.set_study_state(study_uid, ANALYSING, decision.reason,
                                              if_last_received=last, seen_dirty=seen):
                return  # new data arrived meanwhile: assess again
            log.info("event=set_ready study=%s sets=%d reason=%s%s", study_uid,
                     len(decision.sets), decision.reason.replace(" ", "_"),
                     _patient_fields(rows[0].path) if self.settings.logging.include_phi else "")
            self._submit(study_uid, last, [(r.path, r.header) for r in rows])
        elif decision.state == NO_DIXON:
            self.index.set_study_state(study_uid, NO_DIXON, decision.reason,
                                       if_last_received=last, seen_dirty=seen)
        else:
            self.index.set_study_state(study_uid, WAITING, decision.reason,
                                       if_last_received=last, seen_dirty=seen)

    def _submit(self, study_uid: str, last: float, instances: list[tuple[str, dict]]) -> None:
        out_dir = self.node.spool.results_dir(study_uid)
        run_id = uuid.uuid4().hex
        with self._lock:
            self._runs[run_id] = _Run(study_uid)
            future = self._pool.submit(run_analysis, instances, self.settings, str(out_dir),
                                       run_id)
            self._in_flight[study_uid] = future
        started = time.monotonic()
        future.add_done_callback(
            lambda f: self._finished(study_uid, last, f, time.monotonic() - started, run_id)
        )

    def _finished(self, study_uid: str, last: float, future: Future, seconds: float,
                  run_id: str) -> None:
        # The series travel on their own queue: take them all before the result, so that
        # nothing is handed on after the study counts as analysed, and nothing twice.
        with self._lock:
            run = self._runs[run_id]
        if future.cancelled():  # dropped at shutdown: still 'analysing', re-run at next start
            with self._lock:
                self._runs.pop(run_id, None)
                self._in_flight.pop(study_uid, None)
            return
        if future.exception() is None and not run.ended.wait(self.series_lag_seconds):
            log.warning("event=series_end_missing study=%s", study_uid)
        with self._lock:
            self._runs.pop(run_id, None)
        try:
            report = future.result()
        except Exception as exc:  # includes a crashed worker process
            log.error("event=analysis_failed study=%s error=%s", study_uid, type(exc).__name__)
            self.index.set_study_state(study_uid, FAILED, f"{type(exc).__name__}: {exc}"[:500],
                                       if_last_received=last)
            report = None
        else:
            sets = [{"key": s["key"], "state": s.get("state", ANALYSED),
                     "reason": s.get("reason", ""), "report": s}
                    for s in report["dixon_sets"]]
            self.index.record_sets(study_uid, sets)
            self.index.set_study_state(study_uid, ANALYSED, f"{len(sets)} set(s) analysed",
                                       report=report, if_last_received=last)
            self.node.metrics.analysis_seconds.observe(seconds)
            log.info("event=analysis_done study=%s sets=%d seconds=%.2f", study_uid,
                     len(sets), seconds)
        with self._lock:
            self._in_flight.pop(study_uid, None)
        if report is not None:
            missing = [entry for dixon_set in report["dixon_sets"]
                       for entry in dixon_set.get("outputs", [])
                       if entry["sop_instance_uid"] not in run.streamed]
            if missing:  # a safety net: every series is normally handed on as it is written
                log.warning("event=series_not_streamed study=%s outputs=%d", study_uid,
                            len(missing))
                self._hand_on(run, missing)
            for listener in self.listeners:
                listener(study_uid, report)
        self._wake.set()


RETRYABLE_ERRORS = frozenset({"no_association", "connection_lost"})


def is_success(status: int) -> bool:
    """Success, or a warning (coercion, elements discarded): the PACS kept the object."""
    return status == 0x0000 or status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF


def is_retryable(status: int) -> bool:
    """Out of resources (0xA7xx) or processing failure may pass; other failures will not."""
    return 0xA700 <= status <= 0xA7FF or status == 0x0110


class Deliverer(LoopService):
    """Sends queued results to every destination with exponential backoff and jitter."""

    name = "deliverer"
    join_seconds = 60.0

    def __init__(self, node: Node, poll_seconds: float = 1.0, seed: int | None = None) -> None:
        super().__init__(poll_seconds)
        self.node = node
        self.index = node.index
        self.settings = node.settings
        self._random = random.Random(seed)
        self.delivered = 0
        self.failures: dict[str, int] = {}
        # (study, destination) -> the analysis (study updated_at) whose time to result counted.
        self._observed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._observed_lock = threading.Lock()

    def on_start(self) -> None:
        requeued = self.index.requeue_interrupted()
        if requeued:
            log.info("event=outbox_requeued rows=%d", requeued)

    def enqueue(self, study_uid: str, entries: list[dict[str, Any]]) -> None:
        """Assembler series listener: queue the files of a result series just written."""
        out_dir = self.node.spool.results_dir(study_uid)
        outputs = [{**entry, "path": str(out_dir / entry["path"])} for entry in entries]
        destinations = [d.name for d in self.settings.destinations]
        if outputs and destinations:
            rows = self.index.enqueue(study_uid, outputs, destinations)
            log.info("event=results_queued study=%s rows=%d", study_uid, rows)
            self._wake.set()

    def analysis_finished(self, study_uid: str, report: dict[str, Any]) -> None:
        """Assembler listener: everything may have been delivered while it was encoded."""
        for destination in self.settings.destinations:
            self._observe_if_complete(study_uid, destination.name, time.time())

    def backoff(self, attempts: int) -> float:
        outbox = self.settings.outbox
        base = min(outbox.retry_max_seconds, outbox.retry_initial_seconds * 2 ** attempts)
        return base * self._random.uniform(0.5, 1.0)

    def step(self, now: float) -> None:
        for destination in self.settings.destinations:
            rows = self.index.claim_due(destination.name, time.time())
            if rows:
                self.deliver(destination, rows)

    def wait_seconds(self) -> float:
        next_due = self.index.next_due()
        if next_due is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, next_due - time.time()))

    def deliver(self, destination: Any, rows: list[dict[str, Any]]) -> None:
        from marrownode.net.sender import OutgoingFile, send_batch

        files = [OutgoingFile(r["id"], Path(r["path"]), r["sop_class_uid"], r["transfer_syntax"])
                 for r in rows]
        started = time.monotonic()
        results = send_batch(files, destination.host, destination.port, destination.ae_title,
                             self.settings.node.ae_title)
        attempts = {r["id"]: r["attempts"] for r in rows}
        now = time.time()
        outcomes = []
        for result in results:
            tries = attempts[result.key] + 1
            if result.status is not None and is_success(result.status):
                outcomes.append((result.key, "delivered", result.status, "", now))
                continue
            if result.error == "context_refused":
                state, error = "failed", "SOP class or transfer syntax refused by destination"
            elif result.error == "unreadable":
                state, error = "failed", "result file missing or unreadable"
            elif result.error in RETRYABLE_ERRORS or (
                result.status is not None and is_retryable(result.status)
            ):
                state = "queued" if tries < self.settings.outbox.max_attempts else "failed"
                error = result.error or f"status 0x{result.status:04X}"
            else:
                state, error = "failed", f"refused with status 0x{result.status:04X}"
            next_at = now + self.backoff(tries - 1) if state == "queued" else now
            outcomes.append((result.key, state, result.status, error, next_at))
            key = f"{destination.name}:{error}"
            self.failures[key] = self.failures.get(key, 0) + 1
        self.index.finish_delivery(outcomes)
        self._observe_time_to_result(destination.name, rows, outcomes, now)
        delivered = sum(1 for o in outcomes if o[1] == "delivered")
        self.delivered += delivered
        log.info("event=delivery destination=%s sent=%d delivered=%d retry=%d failed=%d "
                 "seconds=%.2f", destination.name, len(rows), delivered,
                 sum(1 for o in outcomes if o[1] == "queued"),
                 sum(1 for o in outcomes if o[1] == "failed"), time.monotonic() - started)


    def _observe_time_to_result(self, destination: str, rows: list[dict[str, Any]],
                                outcomes: list[tuple], now: float) -> None:
        delivered_ids = {o[0] for o in outcomes if o[1] == "delivered"}
        for study_uid in {r["study_uid"] for r in rows if r["id"] in delivered_ids}:
            self._observe_if_complete(study_uid, destination, now)

    def _observe_if_complete(self, study_uid: str, destination: str, now: float) -> None:
        """A study's results are in when it is analysed and none of its rows for this
        destination is pending; counted once per analysis (the delivery and the end of the
        analysis may both see it)."""
        study = self.index.study(study_uid)
        if not study or study["state"] != "analysed":
            return
        deliveries = [d for d in self.index.deliveries(study_uid)
                      if d["destination"] == destination]
        if not deliveries or deliveries[0]["pending"] or deliveries[0]["delivered"] == 0:
            return
        key = (study_uid, destination)
        with self._observed_lock:
            if self._observed.get(key) == study["updated_at"]:
                return
            self._observed[key] = study["updated_at"]
            self._observed.move_to_end(key)
            while len(self._observed) > 10_000:
                self._observed.popitem(last=False)
        self.node.metrics.time_to_result_seconds.labels(destination).observe(
            max(0.0, now - study["last_received"]))


class RetentionSweeper(LoopService):
    """Removes finished studies (spool, results, index rows) after storage.retention_hours.

    Nothing pending is ever removed: studies still receiving, waiting, analysing or with results
    not yet delivered stay until they are done.
    """

    name = "retention"

    def __init__(self, node: Node, interval_seconds: float = 600.0) -> None:
        super().__init__(interval_seconds)
        self.node = node

    def step(self, now: float) -> None:
        self.sweep(now)

    def sweep(self, now: float) -> list[str]:
        retention = self.node.settings.storage.retention_hours * 3600
        removed = []
        for study_uid in self.node.index.expired_studies(now, retention):
            instances = self.node.index.forget_study(study_uid)
            self.node.spool.remove_study(study_uid)
            removed.append(study_uid)
            log.info("event=study_expired study=%s instances=%d", study_uid, instances)
        self.node.index.forget_closed_associations(now - retention)
        return removed


def attach_services(node: Node) -> None:
    """Register background services on the node: assembler, then the deliverer it feeds."""
    assembler = Assembler(node)
    deliverer = Deliverer(node)
    assembler.series_listeners.append(deliverer.enqueue)
    assembler.listeners.append(deliverer.analysis_finished)
    node.association_listeners.append(lambda _association_id: assembler.wake())
    node.add_service(assembler)
    node.add_service(deliverer)
    node.add_service(RetentionSweeper(node))
    if node.settings.http.enabled:
        from marrownode.monitor import HTTPService

        node.add_service(HTTPService(node))
