"""Completion in the node, over real associations: content first, idle timer as fallback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from marrownode.net.pynetdicom_adapter import park_reactor
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import wait_until, write_config
from tests.scu import nodelay, send, storage_ae


def wait_state(node, study_uid: str, states: set[str], timeout: float = 20.0,
               reason: str = "") -> dict:
    """The study once it is in one of `states` (with `reason` in its reason, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = node.index.studies.study(study_uid)
        if (study is not None and study["state"] in states
                and reason in (study["reason"] or "")):
            return study
        time.sleep(0.02)
    raise AssertionError(f"study never reached {states}: {node.index.studies.study(study_uid)}")


def test_complete_set_is_picked_up_within_2s_of_release(node_factory) -> None:
    node = node_factory(completion={"idle_seconds": 600})
    datasets = build_study(StudyOptions(style="siemens", study_key="fast"))
    ae = storage_ae("SCANNER", datasets)
    association = ae.associate("127.0.0.1", node.receiver.port, ae_title="MARROWNODE")
    nodelay(association)
    for ds in datasets:
        park_reactor(association)
        assert association.send_c_store(ds).Status == 0
    time.sleep(1.0)
    study_uid = datasets[0].StudyInstanceUID
    study = node.index.studies.study(study_uid)
    assert study["state"] == "waiting" and "association" in study["reason"]
    association.release()
    released = time.monotonic()
    wait_state(node, study_uid, {"analysing", "analysed"}, timeout=5)
    assert time.monotonic() - released < 2.0
    study = wait_state(node, study_uid, {"analysed"})
    report = json.loads(study["report"])
    assert report["dixon_sets"][0]["foci"], "the lesion is found by the node's pipeline too"
    status = node.index.status()["studies"][0]
    assert status["dixon_sets"][0]["state"] == "analysed"


def test_an_association_ending_while_its_study_is_assessed_is_not_missed(node_factory) -> None:
    """The receiver may record the end of an association between the assessor's look at open
    associations and its 'waiting' verdict. That event must survive the verdict: the study is
    assessed again at once, not left waiting for the idle timer (600 s here). The interleaving
    is forced by closing the association in the index inside that window."""
    node = node_factory(completion={"idle_seconds": 600})
    datasets = build_study(StudyOptions(style="siemens", study_key="window"))
    study_uid = datasets[0].StudyInstanceUID
    all_sent = threading.Event()
    closed_in_window: list[str] = []
    read_open_associations = node.index.studies.open_association_ids

    def read_then_end(uid: str) -> set[str]:
        open_ids = read_open_associations(uid)
        if uid == study_uid and open_ids and all_sent.is_set() and not closed_in_window:
            for association_id in open_ids:  # as the receiver would, just after the read
                node.index.studies.close_association(association_id)
            closed_in_window.extend(open_ids)
        return open_ids

    node.index.studies.open_association_ids = read_then_end  # type: ignore[method-assign]
    ae = storage_ae("SCANNER", datasets)
    association = ae.associate("127.0.0.1", node.receiver.port, ae_title="MARROWNODE")
    nodelay(association)
    try:
        for ds in datasets:
            park_reactor(association)
            assert association.send_c_store(ds).Status == 0
        all_sent.set()
        # The real association stays open: only the event recorded in the window can end it.
        study = wait_state(node, study_uid, {"analysed"}, timeout=20)
        assert closed_in_window, "the window was never exercised"
        assert study["pending_events"] == 0
    finally:
        association.release()


def test_idle_timer_decides_when_headers_cannot(node_factory) -> None:
    node = node_factory(completion={"idle_seconds": 2.5})
    datasets = build_study(StudyOptions(style="anonymised_dual_echo", study_key="timer"))
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    sent = time.monotonic()
    study_uid = datasets[0].StudyInstanceUID
    # Until the node has seen the release, the reason is the open association; then the timer.
    wait_state(node, study_uid, {"waiting"}, timeout=2.0, reason="promise no image count")
    time.sleep(max(0.0, 1.5 - (time.monotonic() - sent)))
    assert node.index.studies.study(study_uid)["state"] == "waiting"
    wait_state(node, study_uid, {"analysed"}, timeout=15)
    assert time.monotonic() - sent >= 2.0
    (set_row,) = node.index.status()["studies"][0]["dixon_sets"]
    assert set_row["state"] == "analysed"


def test_incomplete_by_header_waits_and_late_instances_retrigger(node_factory, tmp_path) -> None:
    node = node_factory(completion={"idle_seconds": 600})
    datasets = build_study(StudyOptions(style="siemens", study_key="late"))
    late = [ds for ds in datasets if ds.SeriesDescription.endswith("_opp")][-2:]
    first = [ds for ds in datasets if ds not in late]
    assert send(node.receiver.port, first) == [0] * len(first)
    study_uid = datasets[0].StudyInstanceUID
    study = wait_state(node, study_uid, {"waiting"})
    time.sleep(1.0)
    study = node.index.studies.study(study_uid)
    assert study["state"] == "waiting" and "10 of 12 images" in study["reason"]
    config = write_config(tmp_path / "status.toml", node.settings)
    table = subprocess.run([sys.executable, "-m", "marrownode", "status", "--config",
                            str(config)], capture_output=True, text=True, timeout=60)
    assert "10 of 12 images" in table.stdout
    assert send(node.receiver.port, late) == [0, 0]
    study = wait_state(node, study_uid, {"analysed"})
    assert json.loads(study["report"])["dixon_sets"][0]["opposed_phase"]["images"] == 12
    first_update = study["updated_at"]
    # A late repeat of an instance already analysed is assessed again, but the sources and
    # settings are those of the analysis: nothing is analysed or sent again (no loop).
    assert send(node.receiver.port, late[:1]) == [0]

    def reassessed() -> bool:
        study = node.index.studies.study(study_uid) or {}
        return study.get("state") == "analysed" and study["updated_at"] > first_update

    wait_until(reassessed, timeout=20)
    assert "received again, unchanged" in node.index.studies.study(study_uid)["reason"]
    assert [e["kind"] for e in node.index.studies.events(study_uid)].count("analysed") == 1


def test_study_without_dixon_is_recorded_as_such(node_factory) -> None:
    from marrownode.synthetic.studies import extra_series

    node = node_factory(completion={"idle_seconds": 1.0})
    datasets = extra_series(StudyOptions(study_key="t2only"), "t2")
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    study = wait_state(node, datasets[0].StudyInstanceUID, {"no_dixon_set"})
    assert "no in-/opposed-phase pair" in study["reason"]


def test_worker_warm_up_rehearses_the_whole_pipeline_quietly(caplog) -> None:
    """The rehearsal writes every result kind (so highdicom, fonts and encoders are loaded
    before the first study) and does not log itself as a study."""
    import logging

    from marrownode.config import Settings
    from marrownode.services.worker_process import warm_up

    with caplog.at_level(logging.INFO):
        outputs = warm_up(Settings())
    assert outputs >= 4  # PM, derived MR, overlay and SR at least once each
    assert not [r for r in caplog.records if "study_analysed" in r.getMessage()]


def test_a_warmed_up_worker_keeps_what_it_loaded_out_of_garbage_collections() -> None:
    """After its rehearsal the worker's objects (modules, highdicom's IOD tables) are frozen
    out of the cyclic collector: a full collection walked all of them (0.1-0.3 s) in the
    middle of a study, and in a forked helper copied their pages."""
    import gc

    from marrownode.config import Settings
    from marrownode.services.worker import AnalysisWorker

    worker = AnalysisWorker(Settings(), on_series=lambda message: None)
    worker.start()
    try:
        at_start = worker.submit(gc.get_freeze_count).result(timeout=120)
        assert at_start > 50_000  # the modules, frozen when the process began
        worker.warm_up()  # one worker: its jobs run in turn, the rehearsal first
        rehearsed = worker.submit(gc.get_freeze_count).result(timeout=120)
        assert rehearsed > at_start + 50_000  # highdicom's tables and all it loaded
        worker.submit(gc.collect).result(timeout=30)
        assert worker.submit(gc.get_freeze_count).result(timeout=30) == rehearsed
    finally:
        worker.shutdown(grace_seconds=0.1)


def test_analyses_dropped_at_shutdown_run_after_the_next_start(node_factory, caplog) -> None:
    """Stopping the node cancels analyses still queued for the worker: they are neither
    failed nor lost (nor an error), but run when the node starts again."""
    import logging

    from marrownode.node import Node
    node = node_factory(completion={"idle_seconds": 600})
    # Keep the worker busy, and the calls the pool hands it early too: what comes next waits.
    for _ in range(4):
        node.assembler.worker.submit(time.sleep, 1.5)
    studies = [build_study(StudyOptions(style="siemens", study_key=f"queued{i}"))
               for i in range(2)]
    port = node.receiver.port
    for datasets in studies:
        assert send(port, datasets) == [0] * len(datasets)
    uids = [datasets[0].StudyInstanceUID for datasets in studies]
    for uid in uids:
        wait_state(node, uid, {"analysing"})
    with caplog.at_level(logging.WARNING):
        node.stop(grace_seconds=1.0)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert [node.index.studies.study(uid)["state"] for uid in uids] == ["analysing", "analysing"]

    again = Node(node.settings)
    again.start()
    try:
        for uid in uids:
            wait_state(again, uid, {"analysed"}, timeout=60)
    finally:
        again.stop(grace_seconds=2.0)


def test_an_unchanged_reforward_keeps_everything_the_study_knew(node_factory, tmp_path) -> None:
    """A PACS forwards an analysed study again, our results in it, its series promising no
    image count (the README's Orthanc rule does exactly this): the study is never shown as
    waiting, keeps its sets' reports (pattern, filters) and its time to result, is not
    analysed or sent again, and the trail says 'received again, unchanged' once."""
    from pydicom import dcmread

    from marrownode.net.standin import StandInPACS
    from marrownode.store.views import StudyFilter, study_page

    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = node_factory(completion={"idle_seconds": 3},
                            destinations=[{"name": "pacs", "ae_title": "STANDIN",
                                           "host": "127.0.0.1", "port": pacs.port}])
        datasets = build_study(StudyOptions(style="anonymised_dual_echo", study_key="again"))
        study_uid = str(datasets[0].StudyInstanceUID)
        assert send(node.receiver.port, datasets) == [0] * len(datasets)

        def delivered() -> bool:
            rows = node.index.outbox.summaries(study_uid)
            study = node.index.studies.study(study_uid) or {}
            return study.get("state") == "analysed" and bool(rows) and rows[0].pending == 0

        wait_until(delivered, timeout=90)
        sent_before = len(pacs.received)
        (before,) = study_page(node.index.db, StudyFilter()).rows
        assert before.pattern and before.time_to_result_seconds is not None
        time.sleep(1.0)

        results = [dcmread(p) for p in (tmp_path / "pacs").glob("*.dcm")]
        assert send(node.receiver.port, [*datasets, *results]) == [0] * (
            len(datasets) + len(results))
        states = set()
        deadline = time.monotonic() + 6.0  # twice the idle timer: never 'waiting' meanwhile
        while time.monotonic() < deadline:
            states.add((node.index.studies.study(study_uid) or {}).get("state"))
            time.sleep(0.05)
        assert "waiting" not in states and "analysing" not in states
        assert node.index.studies.study(study_uid)["state"] == "analysed"
        (after,) = study_page(node.index.db, StudyFilter()).rows
        assert after.pattern == before.pattern  # the sets' reports are still there
        assert after.time_to_result_seconds == before.time_to_result_seconds
        assert study_page(node.index.db, StudyFilter(pattern=before.pattern)).total == 1
        assert len(pacs.received) == sent_before  # nothing sent again
        kinds = [e["kind"] for e in node.index.studies.events(study_uid)]
        assert kinds.count("analysed") == 1 and kinds.count("unchanged") == 1
    finally:
        pacs.stop()


def test_our_results_forwarded_back_during_the_analysis_do_not_cost_a_second_one(
        node_factory) -> None:
    """A PACS rule forwards the study again as soon as our first result reaches it, while the
    node is still analysing: what arrived is no source, so the analysis is recorded and the
    study is found unchanged, not analysed and sent a second time."""
    from pydicom.uid import generate_uid

    from marrownode.synthetic.lumbar import lumbar_phantom

    node = node_factory(completion={"idle_seconds": 600})
    datasets = build_study(StudyOptions(style="siemens", study_key="reforward-early"),
                           lumbar_phantom("metastasis_centre", supersample=1))
    study_uid = datasets[0].StudyInstanceUID
    assert set(send(node.receiver.port, datasets)) == {0}
    wait_state(node, study_uid, {"analysing"})
    ours = datasets[0].copy()  # stands for a result of ours as the PACS sends it back
    ours.SOPInstanceUID = ours.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ours.SeriesInstanceUID = generate_uid()
    ours.Manufacturer = "marrownode"
    assert send(node.receiver.port, [ours]) == [0]
    wait_until(lambda: node.index.studies.study(study_uid)["state"] == "analysed"
               and node.index.studies.study(study_uid)["pending_events"] == 0, timeout=60)
    time.sleep(1.0)
    kinds = [event["kind"] for event in node.index.studies.events(study_uid)]
    assert kinds.count("analysing") == 1, kinds
    assert node.index.studies.study(study_uid)["state"] == "analysed"


def test_a_result_stored_while_the_study_is_looked_at_is_never_taken_for_a_source(
        tmp_path, monkeypatch) -> None:
    """The race the Orthanc loop test met under load: one of our results, forwarded back,
    lands between 'summarise the study' and 'read its instances'. Its row then carries only
    its identity (no Manufacturer): read that way it looks like a new source, the digest
    changes and the study is analysed and sent a second time. The assembler reads the study
    once, every header complete."""
    import copy

    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import generate_uid

    from marrownode.node import Node
    from marrownode.receiving import store_encoded
    from marrownode.services.study_inputs import input_digest
    from tests.conftest import make_settings

    node = Node(make_settings(tmp_path / "node"))  # not started: nothing summarises meanwhile
    node.ingestor.recover()  # what start does first: the spool made ready
    datasets = build_study(StudyOptions(style="siemens", study_key="race"))
    ours = copy.deepcopy(datasets[0])
    ours.SOPInstanceUID = ours.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ours.SeriesInstanceUID = generate_uid()
    ours.Manufacturer = "marrownode"

    def store(dataset) -> None:
        buffer = DicomBytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        assert store_encoded(node.ingestor, buffer.getvalue()) == 0

    for dataset in datasets:
        store(dataset)
    study_uid = str(datasets[0].StudyInstanceUID)
    studies = node.ingestor.studies
    set_headers = studies.set_headers

    def then_ours_arrives(headers) -> None:
        set_headers(headers)
        monkeypatch.setattr(studies, "set_headers", set_headers)
        store(ours)  # stored just after the summarising pass, before anything else

    monkeypatch.setattr(studies, "set_headers", then_ours_arrives)
    first = node.ingestor.summarised_instances(study_uid)
    second = node.ingestor.summarised_instances(study_uid)
    assert len(second) == len(datasets) + 1 and all(r.summarised for r in second)
    assert all(r.summarised for r in first)
    assert (input_digest([r.header for r in first], node.settings)
            == input_digest([r.header for r in second], node.settings))
    assert all(r.summarised for r in node.index.studies.instances(study_uid))  # kept
    node.index.db.close()
