"""What runs inside the analysis worker process: its main loop, the analysis job (the same
pipeline function `process` uses) and the warm-up rehearsal. The node's side, supervision
included, is worker.py; the two talk over one pipe."""

from __future__ import annotations

import errno
import gc
import logging
import os
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from marrownode.config import Settings
from marrownode.report_shape import OutputEntry, PriorShape, StudyShape


@dataclass(frozen=True)
class SeriesWritten:
    """A result series of run run_id is on disk: its report entries."""

    run_id: str
    entries: list[OutputEntry]


#: In the worker process: the pipe to the node (series messages go on it mid-job).
_connection: Connection | None = None


#: How much lower the analysis runs than the node's receiving and delivering threads (a nice
#: value: 10 gives it about a tenth of a contended core's share).
ANALYSIS_NICENESS = 10


def worker_main(connection: Connection, settings: Settings, node_pid: int) -> None:
    """The worker process: run jobs from the pipe until told to stop or the node is gone."""
    from marrownode.logs import configure_logging
    from marrownode.receiving import on_parent_death

    global _connection
    _connection = connection
    configure_logging(settings.logging)
    # Receiving and delivering come first: a scanner's C-STORE and a result on its way to the
    # PACS never wait behind a running analysis (the kernel gives this process the rest).
    os.nice(ANALYSIS_NICENESS)
    # An analysis cut short is re-run at the next start (the study is still 'analysing').
    on_parent_death(lambda: os._exit(1), node_pid)
    out_of_collections()
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        function, args = job
        try:
            answer: tuple[str, Any] = ("result", function(*args))
        except Exception as exc:  # the node decides what a failure means
            answer = ("error", _portable(exc))
        try:
            connection.send(answer)
        except Exception:  # an unpicklable result or error: say what it was
            connection.send(("error", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}")))


def _portable(exc: Exception) -> Exception:
    """An error as the node must see it after pickling: a full disk stays recognisable (pydicom
    wraps ENOSPC in a plain OSError whose cause does not survive the pipe)."""
    from marrownode.store.spool import disk_full

    if disk_full(exc) and getattr(exc, "errno", None) != errno.ENOSPC:
        return OSError(errno.ENOSPC, "No space left on device (writing results)")
    return exc


def run_analysis(
    instances: list[tuple[str, dict[str, Any]]], settings: Settings, out_dir: str, run_id: str,
    superseded: dict[str, list[OutputEntry]] | None = None, prior: PriorShape | None = None,
) -> StudyShape:
    """Worker entry point: analyse one study, sending each series as it is written."""
    from marrownode.pipeline import SourceInstance, analyse_study

    def written(entries: list[OutputEntry]) -> None:
        if _connection is not None:
            _connection.send(("series", SeriesWritten(run_id, entries)))

    sources = [SourceInstance(Path(path), header) for path, header in instances]
    return analyse_study(sources, settings, Path(out_dir), on_outputs=written,
                         superseded=superseded, on_progress=report_progress, prior=prior)


def report_progress(stage: str) -> None:
    """In the worker: tell the supervisor that the running job has moved on (its heartbeat;
    a job silent for [analysis] stall_seconds shows on /healthz)."""
    if _connection is not None:
        _connection.send(("progress", stage))


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
    out_of_collections()  # what the rehearsal loaded (highdicom's IOD tables) stays for good
    return sum(len(s.get("outputs", [])) for s in report["dixon_sets"])


def out_of_collections() -> None:
    """Put every object alive now (the modules, highdicom's IOD tables, some 350,000 after
    the rehearsal) out of the cyclic garbage collector's reach (gc.freeze). A full
    collection walked them all, about 0.1 s in the middle of the next study's analysis, and
    a collection in a forked helper (the map series, the SR) copied their pages."""
    gc.collect()
    gc.freeze()
