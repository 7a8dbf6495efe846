"""[analysis] workers analysis processes sharing one queue of jobs (services/worker.py is one
of them, with its supervision)."""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from marrownode.config import Settings
from marrownode.report_shape import OutputEntry, PriorShape, StudyShape
from marrownode.services.worker import AnalysisWorker, Job
from marrownode.services.worker_process import SeriesWritten


class WorkerPool:
    """[analysis] workers supervised analysis processes sharing one queue of jobs: each takes
    the next study when it is free, so N studies are analysed at once; a killed process costs
    only its own job (its supervisor replaces it, the others go on). The same interface as
    one AnalysisWorker."""

    def __init__(self, settings: Settings, on_series: Callable[[SeriesWritten], None],
                 on_death: Callable[[], None] = lambda: None,
                 time_limit_seconds: float | None = None, count: int | None = None) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self.workers = [AnalysisWorker(settings, on_series, on_death, time_limit_seconds,
                                       jobs=self._jobs, name=f"worker{n + 1}")
                        for n in range(count or settings.analysis.workers)]

    @property
    def deaths(self) -> int:
        """Processes that ended unasked, all workers together (metrics)."""
        return sum(worker.deaths for worker in self.workers)

    @property
    def time_limit_seconds(self) -> float:
        """The limit of one analysis, the same in every worker."""
        return self.workers[0].time_limit_seconds

    @time_limit_seconds.setter
    def time_limit_seconds(self, seconds: float) -> None:
        for worker in self.workers:
            worker.time_limit_seconds = seconds

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def warm_up(self) -> None:
        """Each process rehearses once (the jobs are taken by whichever is free)."""
        for worker in self.workers:
            worker.warm_up()

    def analyse(self, instances: list[tuple[str, dict[str, Any]]], out_dir: Path,
                run_id: str, superseded: dict[str, list[OutputEntry]] | None = None,
                prior: PriorShape | None = None) -> Future[StudyShape]:
        return self.workers[0].analyse(instances, out_dir, run_id, superseded, prior)

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        return self.workers[0].submit(function, *args)

    def alive(self) -> bool:
        return all(worker.alive() for worker in self.workers)

    def job_silence(self) -> tuple[float, str] | None:
        """The longest silence among the running jobs."""
        silences = [s for worker in self.workers if (s := worker.job_silence()) is not None]
        return max(silences, key=lambda s: s[0]) if silences else None

    def pid(self) -> int | None:
        """The first worker's process (tests and logs; pids() has them all)."""
        return self.workers[0].pid()

    def pids(self) -> list[int | None]:
        return [worker.pid() for worker in self.workers]

    def shutdown(self, grace_seconds: float = 30.0) -> None:
        """Every worker stops taking jobs, the running ones get grace_seconds together."""
        for worker in self.workers:
            worker.stop_taking_jobs()
        for _ in self.workers:
            self._jobs.put(None)
        for worker in self.workers:
            worker.finish(grace_seconds)
