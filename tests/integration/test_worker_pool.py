"""Issue 28, point 3: [analysis] workers supervised analysis processes, one study each at a
time, the same supervision as one: N workers run N jobs at once, and a killed worker among
several costs only its own job. (No timings are asserted: which jobs run together is.)"""

from __future__ import annotations

import os
import signal
import threading
import time

from marrownode.config import settings_from_mapping
from marrownode.services.worker import WorkerDied
from marrownode.services.worker_pool import WorkerPool
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import wait_until
from tests.scu import send


def _pool(count: int) -> WorkerPool:
    pool = WorkerPool(settings_from_mapping({"analysis": {"workers": count}}),
                      on_series=lambda message: None)
    pool.start()
    return pool


def test_n_workers_run_n_jobs_at_once_each_in_its_own_process() -> None:
    pool = _pool(2)
    try:
        pids = {pool.submit(os.getpid).result(timeout=120) for _ in range(6)}
        assert pids <= {p for p in pool.pids() if p} and len(pool.pids()) == 2
        jobs = [pool.submit(time.sleep, 3.0) for _ in range(3)]
        wait_until(lambda: jobs[0].running() and jobs[1].running(), timeout=20)
        assert not jobs[2].running()  # one job per worker: the third waits for a free one
        for job in jobs:
            job.result(timeout=60)
    finally:
        pool.shutdown(grace_seconds=1.0)


def test_one_worker_cannot_run_two_jobs_at_once() -> None:
    """The control: with a single worker the second job only starts when the first ends."""
    pool = _pool(1)
    try:
        first, second = pool.submit(time.sleep, 2.0), pool.submit(time.sleep, 0.1)
        wait_until(first.running, timeout=20)
        assert not second.running()
        first.result(timeout=60)
        second.result(timeout=60)
    finally:
        pool.shutdown(grace_seconds=1.0)


def test_a_killed_worker_among_several_costs_only_its_job() -> None:
    pool = _pool(2)
    try:
        pool.submit(int).result(timeout=120)
        victim_job, other_job = pool.submit(time.sleep, 5.0), pool.submit(time.sleep, 5.0)
        wait_until(lambda: victim_job.running() and other_job.running(), timeout=20)
        victim = pool.workers[0].pid()
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        outcomes = []
        for job in (victim_job, other_job):
            error = job.exception(timeout=60)
            outcomes.append(isinstance(error, WorkerDied))
        assert sorted(outcomes) == [False, True]  # exactly one job lost: the killed one's
        assert pool.deaths == 1
        wait_until(lambda: pool.workers[0].pid() not in (None, victim), timeout=20)
        assert pool.submit(int).result(timeout=120) == 0 and pool.alive()
    finally:
        pool.shutdown(grace_seconds=1.0)


def test_a_node_with_two_workers_analyses_two_studies_at_once(node_factory) -> None:
    """Two studies arriving together are analysed side by side on a node with [analysis]
    workers = 2: at one moment both worker processes run an analysis job.

    Both studies come in one association, so both are complete at its release (sent one after
    the other, the first could be analysed before the second arrived); the workers are watched
    from a thread every few milliseconds, as a synthetic study takes well under a second."""
    node = node_factory(analysis={"workers": 2}, completion={"idle_seconds": 60})
    for worker in node.worker.workers:  # both processes up and warmed
        worker.submit(int).result(timeout=120)
    studies = [build_study(StudyOptions(style="siemens", study_key=key))
               for key in ("pool-a", "pool-b")]
    uids = [str(datasets[0].StudyInstanceUID) for datasets in studies]
    most_at_once = 0
    watching = threading.Event()

    def watch() -> None:
        nonlocal most_at_once
        while not watching.is_set():
            busy = sum(w.job_silence() is not None for w in node.worker.workers)
            most_at_once = max(most_at_once, busy)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        together = [dataset for datasets in studies for dataset in datasets]
        assert send(node.receiver.port, together) == [0] * len(together)
        wait_until(lambda: all((node.index.studies.study(uid) or {}).get("state") == "analysed"
                               for uid in uids), timeout=120)
    finally:
        watching.set()
        watcher.join(timeout=5)
    assert most_at_once == 2, "the two studies were never analysed at the same time"
