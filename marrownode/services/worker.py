"""The analysis worker process: the same pipeline function `process` uses, run off the
receiving path, with each written result series sent back to the node as soon as it exists."""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marrownode.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesWritten:
    """A result series of run run_id is on disk: its report entries."""

    run_id: str
    entries: list[dict[str, Any]]


@dataclass(frozen=True)
class RunEnded:
    """Run run_id has written its last series."""

    run_id: str


#: In a worker process: the queue on which SeriesWritten and RunEnded go to the node.
_series_queue: Any = None


def _worker_init(settings: Settings, node_pid: int, series_queue: Any) -> None:
    from marrownode.logs import configure_logging
    from marrownode.receiving import on_parent_death

    global _series_queue
    _series_queue = series_queue
    configure_logging(settings.logging)
    # An analysis cut short is re-run at the next start (the study is still 'analysing').
    on_parent_death(lambda: os._exit(1), node_pid)


def run_analysis(
    instances: list[tuple[str, dict[str, Any]]], settings: Settings, out_dir: str, run_id: str
) -> dict[str, Any]:
    """Worker entry point: analyse one study, streaming its series as SeriesWritten and
    ending with RunEnded, whatever happens."""
    from marrownode.pipeline import SourceInstance, analyse_study

    sources = [SourceInstance(Path(path), header) for path, header in instances]
    try:
        return analyse_study(
            sources, settings, Path(out_dir),
            on_outputs=lambda entries: _series_queue.put(SeriesWritten(run_id, entries)))
    finally:
        _series_queue.put(RunEnded(run_id))


def warm_up(settings: Settings) -> int:
    """Analyse a tiny synthetic study in a fresh worker, so that the first real study pays
    none of the first-time costs (imports, highdicom's IOD tables, fonts). Returns how many
    result files the rehearsal wrote."""
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


class AnalysisWorker:
    """A pool of worker processes (spawned, so nothing of the node's threads is inherited)
    and the queue on which they report written series."""

    def __init__(self, settings: Settings, workers: int = 1) -> None:
        context = multiprocessing.get_context("spawn")
        self.series_queue: Any = context.Queue()
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_worker_init,
            initargs=(settings, os.getpid(), self.series_queue))
        self._settings = settings

    def warm_up(self) -> None:
        """Rehearse in the background; the result is only logged."""
        self._pool.submit(warm_up, self._settings).add_done_callback(_warmed_up)

    def analyse(self, instances: list[tuple[str, dict[str, Any]]], out_dir: Path,
                run_id: str) -> Future[dict[str, Any]]:
        """Queue one study's analysis."""
        return self._pool.submit(run_analysis, instances, self._settings, str(out_dir), run_id)

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run any picklable call in the worker (it queues behind analyses)."""
        return self._pool.submit(function, *args)

    def shutdown(self) -> None:
        """In-flight analyses finish (they are idempotent); queued ones are dropped and, being
        still 'analysing' in the index, are re-run after the next start."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.series_queue.put(None)
