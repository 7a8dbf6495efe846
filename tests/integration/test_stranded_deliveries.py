"""No delivery is ever stranded: every claimed outbox row ends delivered, queued again or
failed with its reason, whatever breaks the attempt (a damaged result file, a PACS that dies
in the middle of a batch, an attempt that ends without recording its outcome)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from marrownode.monitor import Metrics
from marrownode.receiving import open_spool
from marrownode.services.deliverer import Deliverer
from marrownode.states import DeliveryState
from marrownode.store.database import index_path
from marrownode.store.index import Index
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import (
    DCMTK,
    RESULTS_PER_STUDY,
    dcmtk_env,
    free_port,
    make_settings,
    require_binary,
    wait_for_port,
    wait_until,
)


def _result_files(folder: Path, count: int, rows: int = 128) -> list[dict[str, str]]:
    """count distinct MR files (as results would be on disk) and their outbox entries."""
    folder.mkdir(parents=True, exist_ok=True)
    template = build_study(StudyOptions(style="siemens", study_key="stranded"))[0]
    pixels = (np.arange(rows * rows, dtype=np.uint16) % 4000).reshape(rows, rows)
    entries = []
    for _ in range(count):
        dataset = template.copy()
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.Rows = dataset.Columns = rows
        dataset.PixelData = pixels.tobytes()
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        entries.append({"sop_instance_uid": dataset.SOPInstanceUID,
                        "sop_class_uid": dataset.SOPClassUID,
                        "transfer_syntax_uid": ExplicitVRLittleEndian, "path": str(path)})
    return entries


def _deliverer(root: Path, port: int, **outbox: float) -> tuple[Deliverer, Index]:
    settings = make_settings(root, outbox={"retry_initial_seconds": 0.2,
                                           "retry_max_seconds": 0.5, **outbox},
                             destinations=[{"name": "pacs", "ae_title": "PACS",
                                            "host": "127.0.0.1", "port": port}])
    index = Index(index_path(settings.storage.root))
    deliverer = Deliverer(settings, index.outbox, index.studies, open_spool(settings), Metrics(),
                          poll_seconds=0.1, seed=1)
    return deliverer, index


def _states(index: Index) -> dict[str, int]:
    return dict(index.db.connection().execute(
        "SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())


def _storescp(port: int, out: Path, log: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [require_binary(str(DCMTK / "storescp")), "-aet", "PACS", "-od", str(out), str(port)],
            stdout=handle, stderr=subprocess.STDOUT, env=dcmtk_env())
    wait_for_port(port)
    return process


def test_a_damaged_result_file_fails_alone_and_its_batch_is_delivered(tmp_path) -> None:
    """A result file that is no longer DICOM made pydicom raise out of the sender: the batch
    of claimed rows stayed 'sending' for good. Now that row fails with the reason and the
    others are delivered."""
    port = free_port()
    pacs = _storescp(port, tmp_path / "pacs", tmp_path / "storescp.log")
    try:
        deliverer, index = _deliverer(tmp_path / "node", port)
        entries = _result_files(tmp_path / "results", 6)
        Path(entries[2]["path"]).write_bytes(b"not DICOM at all" * 64)
        index.outbox.enqueue("1.2.3", entries, ["pacs"])
        deliverer.deliver_due(deliverer.settings.destinations[0])
        assert _states(index) == {"delivered": 5, "failed": 1}
        (reason,) = index.db.connection().execute(
            "SELECT last_error FROM outbox WHERE state = 'failed'").fetchone()
        assert "unreadable" in reason and "InvalidDicomError" in reason
        assert len(list((tmp_path / "pacs").iterdir())) == 5
    finally:
        pacs.terminate()
        pacs.wait(10)


def test_rows_left_sending_by_an_unfinished_attempt_go_back_to_the_queue(tmp_path) -> None:
    """The watchdog: rows claimed by an attempt that ended without recording them (as a full
    disk or a crash inside the loop would leave them) are due again at the next round and
    delivered; rows of an attempt still running are left alone."""
    port = free_port()
    pacs = _storescp(port, tmp_path / "pacs", tmp_path / "storescp.log")
    try:
        deliverer, index = _deliverer(tmp_path / "node", port)
        index.outbox.enqueue("1.2.3", _result_files(tmp_path / "results", 4), ["pacs"])
        stranded = index.outbox.claim_due("pacs", time.time())  # claimed, never finished
        assert _states(index) == {"sending": 4}
        deliverer._claimed.add(stranded[0].id)  # one still held by a running attempt
        assert deliverer.requeue_stranded() == 3
        assert _states(index) == {"sending": 1, "queued": 3}
        deliverer._claimed.clear()
        deliverer.step(time.time())  # the watchdog's round queues the last one again
        assert _states(index) == {"queued": 4}
        deliverer.deliver_due(deliverer.settings.destinations[0])
        assert _states(index) == {"delivered": 4}
    finally:
        pacs.terminate()
        pacs.wait(10)


def test_a_pacs_killed_mid_batch_again_and_again_strands_nothing(tmp_path) -> None:
    """The soak in the suite's budget: DCMTK's storescp as the PACS, killed with SIGKILL in
    the middle of batches five times and started again. At the end no row is 'sending' or
    failed, and every result is in the PACS, each once."""
    port = free_port()
    out, log = tmp_path / "pacs", tmp_path / "storescp.log"
    deliverer, index = _deliverer(tmp_path / "node", port)
    entries = _result_files(tmp_path / "results", 400, rows=256)
    index.outbox.enqueue("1.2.3", entries, ["pacs"])
    pacs = _storescp(port, out, log)
    deliverer.start()
    interrupted = 0
    try:
        for _ in range(5):
            # kill it while a batch is on the wire (a file has arrived, the batch is not done)
            before = len(list(out.iterdir()))
            deadline = time.monotonic() + 20
            while len(list(out.iterdir())) <= before and time.monotonic() < deadline:
                time.sleep(0.005)
            if _states(index).get("sending"):
                interrupted += 1
            pacs.send_signal(signal.SIGKILL)
            pacs.wait(10)
            time.sleep(0.4)
            pacs = _storescp(port, out, log)
        deadline = time.monotonic() + 60
        while _states(index) != {"delivered": 400} and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        deliverer.stop()
        pacs.terminate()
        pacs.wait(10)
    assert interrupted >= 3  # the kills did land in the middle of batches
    assert _states(index) == {DeliveryState.DELIVERED: 400}
    received = {path.name.split(".", 1)[1] for path in out.iterdir()}
    assert received == {entry["sop_instance_uid"] for entry in entries}
    assert index.outbox.oldest_pending() == {}


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_hung_analysis_is_seen_by_healthz_long_before_its_time_limit(node_factory) -> None:
    """The worker's heartbeat: a job that reports no progress for [analysis] stall_seconds
    makes /healthz 503 (analysis_progressing false, with the silence and the last stage),
    far below the 900 s time limit; a job that ends makes it healthy again."""
    node = node_factory(analysis={"stall_seconds": 1.0},
                        http={"enabled": True, "console": False})
    port = node.http.port
    wait_until(lambda: _healthz(port)[0] == 200, timeout=60)  # the warm-up is over
    hung = node.worker.submit(time.sleep, 4.0)  # a job that says nothing while it runs
    wait_until(lambda: _healthz(port)[0] == 503, timeout=10)
    _, body = _healthz(port)
    assert body["failed"] == ["analysis_progressing"]
    assert body["analysis_silent_seconds"] >= 1.0 and body["analysis_stage"] == "started"
    hung.result(timeout=30)
    wait_until(lambda: _healthz(port)[0] == 200, timeout=10)


def test_an_analysis_reports_its_stages_to_the_supervisor(tmp_path) -> None:
    """A real analysis sends its stages over the pipe: the supervisor hears progress before
    the result (what keeps a slow but working analysis healthy)."""
    from marrownode.services.worker import AnalysisWorker
    from marrownode.services.worker_process import SeriesWritten
    from marrownode.synthetic.studies import write_datasets

    settings = make_settings(tmp_path / "node")
    folder = tmp_path / "in"
    datasets = build_study(StudyOptions(style="siemens", study_key="stages"))
    write_datasets(datasets, folder)
    from marrownode.pipeline import discover

    (instances,) = discover([folder])[0].values()
    stages: list[str] = []
    worker = AnalysisWorker(settings, on_series=lambda message: stages.append(
        f"{worker.job_silence()[1]}" if isinstance(message, SeriesWritten) else ""))
    worker.start()
    try:
        report = worker.analyse([(str(i.path), i.header) for i in instances],
                                tmp_path / "out", "run").result(timeout=120)
    finally:
        worker.shutdown()
    assert report["dixon_sets"][0]["state"] == "analysed"
    # each series was relayed after the stage that writes it was announced
    assert stages and all(stage in ("set 1: writing results", "results written")
                          for stage in stages)
    assert worker.job_silence() is None  # no job: no silence to report


def test_deliveries_stuck_on_a_hung_pacs_show_on_healthz_and_status(node_factory,
                                                                    tmp_path) -> None:
    """A destination whose PACS hangs mid-association (SIGSTOP): its rows stay 'sending'
    past [outbox] stall_seconds, so /healthz says deliveries_progressing false and names it,
    and status shows the age of the oldest undelivered result; after SIGCONT all is
    delivered and health comes back."""
    port = free_port()
    pacs = _storescp(port, tmp_path / "pacs", tmp_path / "storescp.log")
    try:
        node = node_factory(outbox={"stall_seconds": 1.0},
                            http={"enabled": True, "console": False},
                            destinations=[{"name": "pacs", "ae_title": "PACS",
                                           "host": "127.0.0.1", "port": port}])
        wait_until(lambda: _healthz(node.http.port)[0] == 200, timeout=60)
        pacs.send_signal(signal.SIGSTOP)
        node.index.outbox.enqueue("1.2.3", _result_files(tmp_path / "results", 3), ["pacs"])
        node.deliverer.wake()
        wait_until(lambda: _healthz(node.http.port)[0] == 503, timeout=15)
        _, body = _healthz(node.http.port)
        assert body["failed"] == ["deliveries_progressing"]
        assert body["stalled_destinations"] == ["pacs"]
        assert body["oldest_pending_seconds"]["pacs"] >= 1.0
        (destination,) = node.index.status()["destinations"]
        assert destination["oldest_pending_seconds"] >= 1.0
        pacs.send_signal(signal.SIGCONT)
        wait_until(lambda: _states(node.index) == {"delivered": 3}, timeout=40)
        wait_until(lambda: _healthz(node.http.port)[0] == 200, timeout=10)
        assert node.index.status()["destinations"][0]["oldest_pending_seconds"] is None
    finally:
        pacs.send_signal(signal.SIGCONT)
        pacs.terminate()
        pacs.wait(10)


def test_a_hung_pacs_does_not_delay_the_healthy_one(node_factory, tmp_path) -> None:
    """Two destinations, the first a storescp stopped with SIGSTOP (it accepts the TCP
    connection and never answers): the healthy one gets every result of a new study while
    the hung one's first attempt is still waiting out its association timeout. With one
    delivery loop for all destinations the healthy one waited behind that timeout."""
    hung_port, healthy_port = free_port(), free_port()
    hung = _storescp(hung_port, tmp_path / "hung", tmp_path / "hung.log")
    healthy = _storescp(healthy_port, tmp_path / "healthy", tmp_path / "healthy.log")
    hung.send_signal(signal.SIGSTOP)
    try:
        node = node_factory(
            completion={"idle_seconds": 60},
            destinations=[
                {"name": "hung", "ae_title": "PACS", "host": "127.0.0.1", "port": hung_port,
                 "association_timeout_seconds": 60, "dimse_timeout_seconds": 60},
                {"name": "healthy", "ae_title": "PACS", "host": "127.0.0.1",
                 "port": healthy_port}])
        datasets = build_study(StudyOptions(style="siemens", study_key="two-pacs"))
        from tests.scu import send

        assert send(node.receiver.port, datasets) == [0] * len(datasets)
        study_uid = str(datasets[0].StudyInstanceUID)

        def summary(name: str) -> Any:
            return next((s for s in node.index.outbox.summaries(study_uid)
                         if s.destination == name), None)

        wait_until(lambda: (node.index.studies.study(study_uid) or {}).get("state")
                   == "analysed" and summary("healthy") is not None
                   and summary("healthy").pending == 0, timeout=55)
        assert summary("healthy").delivered == RESULTS_PER_STUDY
        assert len(list((tmp_path / "healthy").iterdir())) == RESULTS_PER_STUDY
        # the hung destination is still inside its first attempt: nothing delivered, nothing
        # failed, its rows held by the running attempt
        hung_summary = summary("hung")
        assert hung_summary.delivered == 0 and hung_summary.failed == 0
        assert hung_summary.pending == RESULTS_PER_STUDY
        assert node.index.outbox.destination("hung").last_attempt_at is None
    finally:
        hung.send_signal(signal.SIGCONT)
        for process in (hung, healthy):
            process.terminate()
            process.wait(10)


def test_rows_due_on_a_busy_lane_keep_no_other_loop_turning(tmp_path) -> None:
    """While one destination's lane is inside an attempt (its PACS hung: SIGSTOP), rows queued
    for it meanwhile are due but not its lane's to take yet. The watchdog and the other
    destination's lane used to wait "until the next row is due" across all destinations,
    that is not at all: both went round without pause for as long as the attempt lasted
    (a core's worth of index queries during every delivery). Now each waits for what it
    can act on: the watchdog its poll interval, a lane its own destination's rows."""
    hung_port = free_port()
    hung = _storescp(hung_port, tmp_path / "hung", tmp_path / "hung.log")
    hung.send_signal(signal.SIGSTOP)
    try:
        settings = make_settings(
            tmp_path / "node", destinations=[
                {"name": "hung", "ae_title": "PACS", "host": "127.0.0.1", "port": hung_port,
                 "association_timeout_seconds": 4},
                {"name": "idle", "ae_title": "PACS", "host": "127.0.0.1",
                 "port": free_port()}])
        index = Index(index_path(settings.storage.root))
        deliverer = Deliverer(settings, index.outbox, index.studies, open_spool(settings),
                              Metrics(), poll_seconds=0.1, seed=1)
        rounds = {"watchdog": 0, "hung": 0, "idle": 0}
        requeue, deliver_due = deliverer.requeue_stranded, deliverer.deliver_due

        def counted_requeue() -> int:
            rounds["watchdog"] += 1
            return requeue()

        def counted_deliver_due(destination: Any) -> None:
            rounds[destination.name] += 1
            deliver_due(destination)

        deliverer.requeue_stranded = counted_requeue  # type: ignore[method-assign]
        deliverer.deliver_due = counted_deliver_due  # type: ignore[method-assign]
        entries = _result_files(tmp_path / "results", 4)
        index.outbox.enqueue("1.2.3", entries[:2], ["hung"])
        deliverer.start()
        try:
            wait_until(lambda: _states(index) == {"sending": 2}, timeout=10)
            index.outbox.enqueue("1.2.3", entries[2:], ["hung"])  # due, and not claimable
            for name in rounds:
                rounds[name] = 0
            time.sleep(1.0)
            seen = dict(rounds)
            assert _states(index) == {"sending": 2, "queued": 2}  # still inside the attempt
        finally:
            hung.send_signal(signal.SIGCONT)
            deliverer.stop()
        # 1 s at a 0.1 s poll: about 10 rounds each (a loop without pause makes thousands)
        assert seen["watchdog"] <= 20, seen
        assert seen["idle"] <= 20, seen
        assert seen["hung"] == 0, seen  # its lane is still in the attempt it began
    finally:
        hung.terminate()
        hung.wait(10)


def test_a_lane_waits_for_its_own_destinations_rows(tmp_path) -> None:
    """next_due is a destination's: its earliest queued row, held back by the destination's
    backoff, none while an operator paused it; another destination's rows do not count."""
    _, index = _deliverer(tmp_path / "node", free_port())
    outbox = index.outbox
    entries = _result_files(tmp_path / "results", 2, rows=16)
    assert outbox.next_due("pacs") is None
    outbox.enqueue("1.2.3", entries[:1], ["elsewhere"])
    assert outbox.next_due("pacs") is None  # another destination's row
    outbox.enqueue("1.2.3", entries[1:], ["pacs"])
    (queued_at,) = index.db.connection().execute(
        "SELECT next_attempt_at FROM outbox WHERE destination = 'pacs'").fetchone()
    assert outbox.next_due("pacs") == queued_at
    backoff = queued_at + 30.0
    outbox.record_destination(replace(outbox.destination("pacs"), failures=1,
                                      next_attempt_at=backoff))
    assert outbox.next_due("pacs") == backoff  # the destination answers again no sooner
    outbox.pause("pacs", True)
    assert outbox.next_due("pacs") is None  # until an operator resumes it
    resumed = time.time()
    outbox.pause("pacs", False)  # resumed: everything queued for it is due at once
    due = outbox.next_due("pacs")
    assert due is not None and resumed <= due < backoff
