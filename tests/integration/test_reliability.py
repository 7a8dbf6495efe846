"""Fault trials (#15): the analysis worker killed or over time, a worker that cannot be
started, a destination down then up, a destination that refuses us for good."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from marrownode.net.standin import StandInPACS
from marrownode.services import analysis_record
from marrownode.services.worker import WorkerDied
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import (
    DCMTK,
    RESULTS_PER_STUDY,
    dcmtk_env,
    free_port,
    require_binary,
    results_delivered,
    wait_for_port,
    wait_until,
)
from tests.scu import can_associate, send


def study_uid_after_sending(node: Any, key: str) -> str:
    datasets = build_study(StudyOptions(style="siemens", study_key=key))
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    return str(datasets[0].StudyInstanceUID)


def state_of(node: Any, study_uid: str) -> str:
    return str((node.index.studies.study(study_uid) or {}).get("state"))


def sample(node: Any, name: str) -> float:
    return node.metrics.registry.get_sample_value(name) or 0.0


def test_a_killed_worker_is_replaced_and_the_queue_goes_on(node_factory) -> None:
    """kill -9 of the worker (what the OOM killer does): the job it ran fails with the
    reason, a new process takes over at once, and the study queued behind it is analysed."""
    node = node_factory(completion={"idle_seconds": 60})
    node.worker.submit(int).result(timeout=120)  # the warm-up is done
    blocker = node.worker.submit(time.sleep, 120)
    wait_until(blocker.running, timeout=10)
    study_uid = study_uid_after_sending(node, "queued-behind")
    wait_until(lambda: state_of(node, study_uid) == "analysing", timeout=20)
    killed = node.worker.pid()
    assert killed is not None

    os.kill(killed, signal.SIGKILL)
    error = blocker.exception(timeout=10)
    assert isinstance(error, WorkerDied) and "killed by signal 9" in str(error)
    wait_until(lambda: state_of(node, study_uid) == "analysed", timeout=90)
    assert node.worker.pid() not in (None, killed)
    assert node.worker.deaths == 1 and sample(node, "marrownode_worker_deaths_total") == 1
    assert node.health().ok


def test_the_worker_analyses_at_lower_priority_than_the_node_receives(node_factory) -> None:
    """Receiving and delivering come first: the analysis process runs at a higher nice value
    than the node's own (receiver, deliverer), so a burst of analysis never starves ingest."""
    node = node_factory()
    node.worker.submit(int).result(timeout=120)
    worker = node.worker.pid()
    assert worker is not None
    assert os.getpriority(os.PRIO_PROCESS, worker) >= os.getpriority(os.PRIO_PROCESS, 0) + 10


def test_a_study_that_ends_the_worker_twice_is_failed_and_the_node_goes_on(
        node_factory, monkeypatch) -> None:
    """An analysis over its time limit is stopped like a killed worker: retried once, then
    failed with the reason; the next study is analysed by the replacement worker."""
    monkeypatch.setattr(analysis_record, "RETRY_BASE_SECONDS", 0.2)
    node = node_factory(completion={"idle_seconds": 60})
    node.worker.submit(int).result(timeout=120)
    node.worker.time_limit_seconds = 0.01
    doomed = study_uid_after_sending(node, "too-slow")
    wait_until(lambda: state_of(node, doomed) == "failed", timeout=60)
    study = node.index.studies.study(doomed)
    assert "ended the worker process 2 times" in study["reason"]
    assert "time limit" in study["reason"]
    assert node.worker.deaths == 2
    assert sample(node, "marrownode_analysis_failures_total") == 2
    time.sleep(1.0)  # failed for good: not tried a third time
    assert node.worker.deaths == 2 and state_of(node, doomed) == "failed"

    node.worker.time_limit_seconds = 900
    fine = study_uid_after_sending(node, "in-time")
    wait_until(lambda: state_of(node, fine) == "analysed", timeout=90)
    assert node.health().ok


class _NoNewProcesses:
    """A multiprocessing context whose Process cannot be started (fork refused)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def Pipe(self, duplex: bool = True) -> Any:
        return self.real.Pipe(duplex)

    def Process(self, *args: Any, **kwargs: Any) -> Any:
        return _Unstartable()


class _Unstartable:
    def start(self) -> None:
        raise OSError(11, "Resource temporarily unavailable")


def test_health_reports_a_worker_that_cannot_be_started(node_factory) -> None:
    from tests.integration.test_operations import http_get

    http_port = free_port()
    node = node_factory(http={"enabled": True, "port": http_port})
    node.worker.submit(int).result(timeout=120)
    real = node.worker.workers[0]._context
    node.worker.workers[0]._context = _NoNewProcesses(real)
    os.kill(node.worker.pid(), signal.SIGKILL)
    wait_until(lambda: not node.health().ok, timeout=10)
    status, body = http_get(http_port, "/healthz")
    assert status == 503 and b'"failed": ["analysis_worker"]' in body

    node.worker.workers[0]._context = real  # the cause goes away: the supervisor starts one
    wait_until(lambda: node.health().ok, timeout=40)
    assert node.worker.submit(int).result(timeout=120) == 0
    assert http_get(http_port, "/healthz")[0] == 200


def associations_received(log: Path) -> int:
    return log.read_text(errors="replace").count("Association Received")


def test_a_destination_down_then_up_gets_few_attempts_and_its_backlog_at_once(
        node_factory, tmp_path, caplog) -> None:
    """While DCMTK's storescp is down the node backs off per destination (not per result);
    once it is up, the results of two studies go in a handful of associations."""
    import logging

    storescp = require_binary(str(DCMTK / "storescp"))
    port = free_port()
    node = node_factory(
        completion={"idle_seconds": 60},
        outbox={"retry_initial_seconds": 0.5, "retry_max_seconds": 4.0},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                       "port": port}])
    with caplog.at_level(logging.INFO, logger="marrownode.services.deliverer"):
        uids = [study_uid_after_sending(node, f"backlog{i}") for i in range(2)]
        wait_until(lambda: all(state_of(node, uid) == "analysed" for uid in uids), timeout=120)
        time.sleep(6.0)
        attempts_down = sum("event=delivery " in r.getMessage() for r in caplog.records)
        destination = node.index.outbox.destination("pacs")
        assert destination.failures >= 3 and "connection refused by 127.0.0.1:" in (
            destination.last_error)
        # Doubling from 0.5 s to 4 s: some ten attempts in all, whatever the number of rows.
        assert 3 <= attempts_down <= 14
        assert all(not results_delivered(node, uid) for uid in uids)

        out = tmp_path / "pacs"
        out.mkdir()
        log = tmp_path / "storescp.log"
        with log.open("wb") as handle:
            pacs = subprocess.Popen([storescp, "-v", "-aet", "PACS", "-od", str(out), str(port)],
                                    stdout=handle, stderr=subprocess.STDOUT, env=dcmtk_env())
            try:
                wait_for_port(port)
                caplog.clear()
                wait_until(lambda: all(results_delivered(node, uid) for uid in uids),
                           timeout=30)
                attempts_up = sum("event=delivery " in r.getMessage() for r in caplog.records)
            finally:
                pacs.terminate()
                pacs.wait(10)
    files = list(out.iterdir())
    assert len(files) == 2 * RESULTS_PER_STUDY  # each result of both studies, once
    assert associations_received(log) <= 3 and attempts_up <= 3
    assert node.index.outbox.destination("pacs").failures == 0


def test_a_permanent_rejection_fails_at_once_and_a_corrected_address_delivers(
        node_factory, tmp_path) -> None:
    """Called AE title not recognised: the rows fail with the reason after one association
    attempt and are not retried; the node restarted with the right AE title sends them."""
    from marrownode.node import Node

    pacs = StandInPACS(tmp_path / "pacs", ae_title="STANDIN")
    pacs.ae.require_called_aet = True
    pacs.start()
    try:
        node = node_factory(
            completion={"idle_seconds": 60},
            outbox={"retry_initial_seconds": 0.2, "retry_max_seconds": 0.5},
            destinations=[{"name": "pacs", "ae_title": "WRONG", "host": "127.0.0.1",
                           "port": pacs.port}])
        study_uid = study_uid_after_sending(node, "wrong-ae")
        wait_until(lambda: state_of(node, study_uid) == "analysed", timeout=90)
        wait_until(lambda: node.index.outbox.summaries(study_uid)[0].failed == RESULTS_PER_STUDY,
                   timeout=30)
        (summary,) = node.index.outbox.summaries(study_uid)
        assert "rejected permanently" in summary.failed_reason
        assert "called AE title not recognised" in summary.failed_reason
        time.sleep(1.5)  # three times the longest backoff: nothing is tried again
        attempts = node.index.db.connection().execute(
            "SELECT DISTINCT attempts FROM outbox").fetchall()
        assert [row[0] for row in attempts] == [1] and not pacs.received
        node.stop(grace_seconds=1.0)

        corrected = node.settings.model_copy(update={"destinations": [
            node.settings.destinations[0].model_copy(update={"ae_title": "STANDIN"})]})
        again = Node(corrected)
        again.start()
        try:
            wait_until(lambda: results_delivered(again, study_uid), timeout=30)
        finally:
            again.stop(grace_seconds=1.0)
        assert len(pacs.received) == RESULTS_PER_STUDY
    finally:
        pacs.stop()


@pytest.fixture(autouse=True)
def _quiet_pynetdicom() -> None:
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def test_index_full_after_the_spool_write_answers_a700_and_leaves_no_unindexed_file(
        node_factory) -> None:
    """The disk fills between the spool write and the index commit (SQLite's own
    'database or disk is full', provoked with max_page_count): the instance is answered
    0xA700 (not 0x0110), its file does not stay behind, and the association is closed in the
    index; once there is room the same instances are stored."""
    node = node_factory(completion={"idle_seconds": 60})
    db = node.ingestor.studies.db
    real_connection = db.connection
    with db.transaction() as connection:  # a little room: the first rows fit, later ones not
        pages = connection.execute("PRAGMA page_count").fetchone()[0] + 3

    def limited() -> Any:
        connection = real_connection()
        connection.execute(f"PRAGMA max_page_count = {pages}")
        return connection

    db.connection = limited
    datasets = build_study(StudyOptions(style="siemens", study_key="index-full"))
    statuses = send(node.receiver.port, datasets)
    assert 0xA700 in statuses and 0x0110 not in statuses and statuses[0] == 0
    assert set(statuses) == {0x0000, 0xA700}
    del db.connection  # room again (the association threads' connections are closed)

    stored = {ds.SOPInstanceUID for ds, status in zip(datasets, statuses, strict=True)
              if status == 0}
    indexed = {row.sop_instance_uid for row in
               node.index.studies.instances(datasets[0].StudyInstanceUID)}
    files = {p.stem for p in node.spool.data_dir.rglob("*.dcm")}
    assert indexed == stored and len(files) == len(stored)  # no file without its row
    assert not list(node.spool.temp_dir.iterdir())
    open_rows = node.index.db.connection().execute(
        "SELECT COUNT(*) FROM associations WHERE closed_at IS NULL").fetchone()[0]
    assert open_rows == 0

    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    assert len(list(node.spool.data_dir.rglob("*.dcm"))) == len(datasets)


@pytest.mark.parametrize("damage", ["header", "page", "truncated"])
def test_a_damaged_index_is_named_with_the_way_out_and_rebuilt_from_the_spool(
        node_factory, tmp_path, damage: str) -> None:
    """serve and status end with one line naming the file and `rebuild-index` (exit 3, which
    the unit does not restart on); rebuild-index keeps the damaged file and re-indexes the
    spool; the node then analyses the study again."""
    import sys

    from marrownode.node import Node
    from marrownode.store.database import index_path
    from tests.conftest import write_config

    node = node_factory(completion={"idle_seconds": 60})
    study_uid = study_uid_after_sending(node, "damaged")
    wait_until(lambda: state_of(node, study_uid) == "analysed", timeout=90)
    instances = node.index.studies.instance_count()
    node.stop(grace_seconds=1.0)
    node.index.db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = index_path(node.settings.storage.root)
    with path.open("r+b") as handle:
        if damage == "header":
            handle.write(b"this is not SQLite" * 4)
        elif damage == "truncated":  # a copy or a disk that stopped half-way
            handle.truncate(path.stat().st_size // 2)
        else:
            handle.seek(4096 * 2)
            handle.write(bytes(range(256)) * 16)
    config = write_config(tmp_path / "damaged.toml", node.settings)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "marrownode", *args, "--config",
                               str(config)], capture_output=True, text=True, timeout=60)

    for command in ("status", "serve"):
        result = run(command)
        assert result.returncode == 3, result.stderr
        lines = [line for line in result.stderr.splitlines() if "damaged" in line]
        assert "Traceback" not in result.stderr and len(lines) == 1
        assert str(path) in lines[0] and "marrownode rebuild-index" in lines[0]

    rebuilt = run("rebuild-index")
    assert rebuilt.returncode == 0, rebuilt.stderr
    kept = list(path.parent.glob("index.sqlite3.damaged-*"))
    assert kept and f"{instances} instances, 1 studies" in rebuilt.stdout
    status = run("status", "--json")
    assert status.returncode == 0 and f'"instances": {instances}' in status.stdout

    again = Node(node.settings)
    again.start()
    try:
        wait_until(lambda: state_of(again, study_uid) == "analysed", timeout=120)
    finally:
        again.stop(grace_seconds=1.0)


def test_a_dead_receiving_process_is_replaced_and_its_associations_closed(node_factory) -> None:
    """receiver_processes = 2: kill -9 of the extra process while it holds associations;
    a new one listens within seconds, its associations are closed in the index (so their
    studies are not held back as 'still sending'), their slots of the node's
    max_associations are free again, and the node goes on receiving."""
    from tests.scu import storage_ae

    node = node_factory(node={"receiver_processes": 2, "max_associations": 12})
    extra = node.receiver_processes
    dead_pid = extra._processes[0].pid
    ae = storage_ae("SCANNER")
    held = [ae.associate("127.0.0.1", node.receiver.port, ae_title="MARROWNODE")
            for _ in range(12)]
    assert all(a.is_established for a in held)
    # The limit is the node's, not each process's (12 more would fit in two processes'
    # own counts); one more is refused, whichever process the kernel hands it to.
    assert node.receiver.stats.open_associations == 12
    assert not any(can_associate(node.receiver.port) for _ in range(4))
    rows = node.index.db.connection().execute
    wait_until(lambda: rows("SELECT COUNT(*) FROM associations WHERE closed_at IS NULL")
               .fetchone()[0] == 12, timeout=10)
    on_dead = rows("SELECT COUNT(*) FROM associations WHERE pid = ?", (dead_pid,)).fetchone()[0]
    assert on_dead >= 3  # shared out by what each process holds: about six and six

    os.kill(dead_pid, signal.SIGKILL)
    wait_until(lambda: extra.deaths == 1 and extra.alive(), timeout=20)
    assert extra._processes[0].pid != dead_pid
    still_open = rows("SELECT COUNT(*) FROM associations WHERE pid = ? AND closed_at IS NULL",
                      (dead_pid,)).fetchone()[0]
    assert still_open == 0
    assert sample(node, "marrownode_receiver_process_deaths_total") == 1
    for association in held:
        if association.is_established:
            association.release()
    # The dead process's slots went with it: all twelve can be held again.
    wait_until(lambda: node.receiver.stats.open_associations == 0, timeout=10)
    again = [ae.associate("127.0.0.1", node.receiver.port, ae_title="MARROWNODE")
             for _ in range(12)]
    assert all(a.is_established for a in again)
    for association in again:
        association.release()
    for i in range(4):  # whichever process takes them, they are stored
        datasets = build_study(StudyOptions(style="siemens", study_key=f"after{i}"))[:2]
        assert send(node.receiver.port, datasets) == [0, 0]
    assert node.health().ok


def test_stopping_mid_analysis_is_bounded_and_not_counted_against_the_study() -> None:
    """A stop (systemd's TimeoutStopSec is 60 s) waits for the running job only so long;
    the job ends as WorkerStopped, which the assembler leaves 'analysing' for the next start,
    not as a failure or a death of the study's making."""
    from marrownode.config import Settings
    from marrownode.services.worker import AnalysisWorker, WorkerStopped

    worker = AnalysisWorker(Settings(), on_series=lambda message: None)
    worker.start()
    try:
        assert worker.submit(int).result(timeout=120) == 0
        long_job = worker.submit(time.sleep, 120)
        wait_until(long_job.running, timeout=10)
        started = time.monotonic()
        worker.shutdown(grace_seconds=0.5)
        assert time.monotonic() - started < 15.0
        assert isinstance(long_job.exception(timeout=5), WorkerStopped)
        assert worker.deaths == 0
    finally:
        worker.shutdown(grace_seconds=0.1)


def test_partial_results_of_a_failed_analysis_are_named_in_the_study(node_factory, tmp_path,
                                                                      monkeypatch) -> None:
    """The worker is killed twice in the middle of writing results, after some of them were
    delivered: the study fails for good, and a note goes into the same study saying that the
    analysis failed, why, and which delivered series are incomplete (valid per dciodvfy)."""
    from pydicom import dcmread

    monkeypatch.setattr(analysis_record, "RETRY_BASE_SECONDS", 0.2)
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = node_factory(completion={"idle_seconds": 60},
                            destinations=[{"name": "pacs", "ae_title": "STANDIN",
                                           "host": "127.0.0.1", "port": pacs.port}])
        node.worker.submit(int).result(timeout=120)
        study_uid = study_uid_after_sending(node, "half-done")

        def queued_since(moment: float) -> int:
            return int(node.index.db.connection().execute(
                "SELECT COUNT(*) FROM outbox WHERE study_uid = ? AND queued_at > ?",
                (study_uid, moment)).fetchone()[0])

        since = 0.0
        for deaths in (1, 2):  # kill it once its first results are queued, twice
            wait_until(lambda since=since: queued_since(since) > 0
                       and node.worker.job_silence() is not None, timeout=60,
                       interval=0.005)  # the window: first results queued, job not ended
            since = time.time()
            os.kill(node.worker.pid(), signal.SIGKILL)
            wait_until(lambda deaths=deaths: node.worker.deaths == deaths, timeout=30)
        wait_until(lambda: state_of(node, study_uid) == "failed", timeout=60)
        reason = node.index.studies.study(study_uid)["reason"]
        assert "already sent are incomplete" in reason

        def note() -> Path | None:
            for path in (tmp_path / "pacs").glob("*.dcm"):
                header = dcmread(path, stop_before_pixels=True)
                if header.SeriesDescription.startswith("marrownode analysis FAILED"):
                    return path
            return None

        wait_until(lambda: note() is not None, timeout=60)
        delivered = {dcmread(p, stop_before_pixels=True).SeriesInstanceUID
                     for p in (tmp_path / "pacs").glob("*.dcm") if p != note()}
        sr = dcmread(note())
        assert sr.StudyInstanceUID == study_uid and sr.PatientID
        texts = [item.TextValue for item in sr.ContentSequence]
        assert "worker process" in texts[0] and "failed" in texts[0]
        named = {text.split("series ", 1)[1].split(")")[0] for text in texts[1:]}
        assert delivered and delivered <= named  # every delivered series is named
        result = subprocess.run(["/usr/bin/dciodvfy", str(note())], capture_output=True,
                                text=True, timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == []
        assert any(e["kind"] == "failure_note" for e in node.index.studies.events(study_uid))
    finally:
        pacs.stop()


def _descendants(pid: int) -> set[int]:
    """Every process below pid (from /proc), its children's children included."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_node_killed_with_sigkill_leaves_no_worker_behind(tmp_path, serve_process) -> None:
    """The analysis workers are forked by a fork server, not by the node: when the node is
    killed (-9, the OOM killer), the server ends and every worker sees it and exits, so a
    restarted node never shares the machine with orphans still analysing."""
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "node", analysis={"workers": 2})
    node = serve_process(settings).start(port=settings.node.port)
    wait_until(lambda: "worker_warmed_up" in node.log.read_text(), timeout=90)
    assert node.process is not None
    below = _descendants(node.process.pid)
    assert len(below) >= 3  # the fork server and the two workers (and their helpers)
    node.signal(signal.SIGKILL)
    node.wait()
    wait_until(lambda: not any(_running(pid) for pid in below), timeout=10)
