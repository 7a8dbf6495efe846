"""The analysis worker: one forked process, supervised (services/worker_pool.py runs several).

Analysis runs off the receiving path in a process of its own, the same pipeline function that
`process` uses. The node talks to it over one pipe: a job goes in, the job's written result
series come back as they are written (SeriesWritten), then its result or error. Jobs wait in
the node, not in the process, so a worker that dies (the OOM killer, kill -9, a time limit)
costs only the job it was running: the supervisor sees the process end at once, fails that
job with WorkerDied, starts a new process and goes on with the next job.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from marrownode.config import Settings
from marrownode.report_shape import OutputEntry, PriorShape, StudyShape
from marrownode.services.worker_process import SeriesWritten, run_analysis, warm_up, worker_main

log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """The worker process ended while it ran a job (killed, out of memory, over time)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkerStopped(RuntimeError):
    """The node stopped the worker while it ran a job (shutdown past its grace): not the
    job's fault; the job runs again after the next start."""


@dataclass
class Job:
    """A function to run in a worker process, and the future its answer goes to."""

    function: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)


#: What the fork server imports once, so that every worker it forks starts with the analysis
#: loaded (numpy, scipy, highdicom, the pipeline) instead of importing it all again.
WORKER_PRELOAD = ["marrownode.services.worker_process", "marrownode.pipeline"]


def worker_context() -> multiprocessing.context.ForkServerContext:
    """Analysis workers are forked by a fork server: a clean single-threaded process started
    once, which imported the analysis, not the node itself with its threads and sockets (what
    makes a plain fork unsafe). A replacement for a killed worker is ready in a fraction of a
    second instead of importing everything again; the server ends with the node."""
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, multiprocessing.context.ForkServerContext)
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def _warmed_up(future: Future[int]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:  # the node still works; only the first study is slower
        log.warning("event=worker_warm_up_failed error=%s", type(error).__name__)
    else:
        log.info("event=worker_warmed_up outputs=%d", future.result())


def _death_reason(exitcode: int | None, timed_out: bool, limit: float) -> str:
    if timed_out:
        return f"analysis exceeded its time limit of {limit:.0f} s and was stopped"
    if exitcode is not None and exitcode < 0:
        return (f"worker process killed by signal {-exitcode}"
                + (" (out of memory?)" if -exitcode == 9 else ""))
    return f"worker process exited with code {exitcode}"


class AnalysisWorker:
    """One supervised worker process and the queue of jobs waiting for it."""

    #: How often an idle supervisor looks whether the process still lives.
    idle_check_seconds = 0.5
    #: Restarting a process that cannot be started waits this long at most between tries.
    max_restart_delay_seconds = 30.0

    def __init__(self, settings: Settings, on_series: Callable[[SeriesWritten], None],
                 on_death: Callable[[], None] = lambda: None,
                 time_limit_seconds: float | None = None,
                 jobs: queue.Queue[Job | None] | None = None, name: str = "worker") -> None:
        """jobs: a queue shared with the pool's other workers (each takes the next job when it
        is free: one study per process at a time)."""
        self._settings = settings
        self._on_series = on_series
        self._on_death = on_death
        self.name = name
        self.time_limit_seconds = (time_limit_seconds if time_limit_seconds is not None
                                   else settings.analysis.time_limit_seconds)
        self._context = worker_context()
        self._jobs: queue.Queue[Job | None] = jobs if jobs is not None else queue.Queue()
        self._process: Any = None
        self._connection: Connection | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._start_failures = 0
        #: Processes that ended unasked, since the node started (metrics).
        self.deaths = 0
        # The running job's heartbeat: monotonic time of its last sign of progress, and what.
        self._progress_at: float | None = None
        self._progress_stage = ""

    # --- the node's side ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the process and its supervisor."""
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise,
                                            name=f"{self.name}-supervisor", daemon=True)
        self._supervisor.start()

    def warm_up(self) -> None:
        """Rehearse in the background; the result is only logged."""
        self.submit(warm_up, self._settings).add_done_callback(_warmed_up)

    def analyse(self, instances: list[tuple[str, dict[str, Any]]], out_dir: Path,
                run_id: str, superseded: dict[str, list[OutputEntry]] | None = None,
                prior: PriorShape | None = None) -> Future[StudyShape]:
        """Queue one study's analysis (superseded: per set, earlier reports it replaces;
        prior: the patient's earlier study it is compared with)."""
        return self.submit(run_analysis, instances, self._settings, str(out_dir), run_id,
                           superseded, prior)

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run any picklable call in the worker (it queues behind analyses)."""
        job = Job(function, args)
        if self._stopping.is_set():
            job.future.cancel()
        else:
            self._jobs.put(job)
        return job.future

    def alive(self) -> bool:
        """Whether the worker can take jobs: the supervisor runs and the last start of a
        process succeeded (a process that just died is being replaced, which is healthy)."""
        return (self._supervisor is not None and self._supervisor.is_alive()
                and self._start_failures == 0)

    def job_silence(self) -> tuple[float, str] | None:
        """Seconds since the running job last reported progress, and its last stage; None
        when no job runs."""
        at = self._progress_at
        if at is None:
            return None
        return time.monotonic() - at, self._progress_stage

    def pid(self) -> int | None:
        """The current worker process (tests and logs)."""
        return self._process.pid if self._process is not None else None

    def shutdown(self, grace_seconds: float = 30.0) -> None:
        """The job in progress may finish within grace_seconds, else its process is stopped
        (WorkerStopped: the study stays 'analysing' and is re-run after the next start, as are
        the waiting jobs, which are cancelled). Bounded, so that a stop by systemd ends before
        its TimeoutStopSec."""
        self.stop_taking_jobs()
        self._jobs.put(None)
        self.finish(grace_seconds)

    def stop_taking_jobs(self) -> None:
        """Take no new job; cancel the waiting ones (they run again after the next start)."""
        self._stopping.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()

    def finish(self, grace_seconds: float) -> None:
        """Let the running job end within grace_seconds (else stop it), then the process."""
        if self._supervisor is not None:
            self._supervisor.join(grace_seconds)
            if self._supervisor.is_alive() and self._process is not None:
                log.warning("event=worker_stopped_mid_job grace_seconds=%.0f", grace_seconds)
                self._process.kill()
                self._supervisor.join(10.0)
        self._stop_process()

    # --- the supervisor thread ----------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._jobs.get(timeout=self.idle_check_seconds)
            except queue.Empty:
                self._check_idle_process()
                continue
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            self._run(job)

    def _check_idle_process(self) -> None:
        process = self._process
        if process is None or not process.is_alive():
            if process is not None:
                self._died(_death_reason(process.exitcode, False, 0.0), idle=True)
            self._spawn()

    def _run(self, job: Job) -> None:
        if self._process is None or not self._process.is_alive():
            self._spawn()
        if self._process is None or self._connection is None:
            job.future.set_exception(WorkerDied("the worker process could not be started"))
            return
        connection, process = self._connection, self._process
        try:
            connection.send((job.function, job.args))
        except (OSError, ValueError) as exc:
            job.future.set_exception(WorkerDied(f"could not hand the job over: {exc}"))
            self._died("the pipe to the worker process broke")
            self._spawn()
            return
        self._await(job, connection, process)

    def _await(self, job: Job, connection: Connection, process: Any) -> None:
        """Relay series messages until the job's answer, the process's end or the limit."""
        deadline = time.monotonic() + self.time_limit_seconds
        self._progress_at, self._progress_stage = time.monotonic(), "started"
        try:
            self._relay_until_answer(job, connection, process, deadline)
        finally:
            self._progress_at = None

    def _relay_until_answer(self, job: Job, connection: Connection, process: Any,
                            deadline: float) -> None:
        while True:
            ready = wait([connection, process.sentinel],
                         timeout=max(0.0, deadline - time.monotonic()))
            if connection in ready:
                try:
                    kind, value = connection.recv()
                except (EOFError, OSError):
                    ready = [process.sentinel]
                else:
                    if kind in ("series", "progress"):
                        self._progress_at = time.monotonic()
                        if kind == "series":
                            self._progress_stage = "results written"
                            self._relay(value)
                        else:
                            self._progress_stage = str(value)
                        continue
                    if kind == "result":
                        job.future.set_result(value)
                    else:
                        job.future.set_exception(value)
                    return
            timed_out = not ready
            if timed_out:
                process.kill()
            process.join(5.0)
            if self._stopping.is_set():  # the node stopped it: not the job's doing
                job.future.set_exception(WorkerStopped("stopped with the node"))
                connection.close()
                self._process = self._connection = None
                return
            reason = _death_reason(process.exitcode, timed_out, self.time_limit_seconds)
            job.future.set_exception(WorkerDied(reason))
            self._died(reason)
            self._spawn()
            return

    def _relay(self, message: SeriesWritten) -> None:
        try:
            self._on_series(message)
        except Exception:
            log.exception("event=series_callback_error run=%s", message.run_id)

    def _died(self, reason: str, idle: bool = False) -> None:
        self.deaths += 1
        self._on_death()
        pid = self._process.pid if self._process is not None else None
        log.error("event=worker_died pid=%s idle=%s reason=%s", pid, idle,
                  reason.replace(" ", "_"))
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None

    def _spawn(self) -> None:
        """Start a worker process; on failure, try again later (health says so meanwhile)."""
        if self._stopping.is_set():
            return
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main, name="marrownode-worker", daemon=True,
            args=(theirs, self._settings, os.getpid()))
        try:
            process.start()
        except OSError as exc:
            self._start_failures += 1
            delay = min(self.max_restart_delay_seconds, 2.0 ** self._start_failures)
            log.error("event=worker_start_failed error=%s retry_in=%.0f", exc, delay)
            ours.close()
            theirs.close()
            self._stopping.wait(delay)
            return
        theirs.close()
        self._process, self._connection = process, ours
        if self._start_failures or self.deaths:
            log.info("event=worker_started pid=%s deaths=%d", process.pid, self.deaths)
        self._start_failures = 0

    def _stop_process(self) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if process is None:
            return
        try:
            if connection is not None:
                connection.send(None)
        except (OSError, ValueError):
            pass
        process.join(10.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)
        if connection is not None:
            connection.close()
