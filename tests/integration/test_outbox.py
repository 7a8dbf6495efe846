"""Outbox and sender: batches, refusals recorded not retried, backoff, status visibility."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pydicom.uid import ParametricMapStorage

from marrownode.net.standin import StandInPACS
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import RESULTS_PER_STUDY, results_delivered, wait_until, write_config
from tests.scu import send


def test_refused_sop_class_is_recorded_and_the_rest_delivered(node_factory, tmp_path) -> None:
    pacs = StandInPACS(tmp_path / "pacs", refuse_sop_classes=[ParametricMapStorage]).start()
    try:
        node = node_factory(
            completion={"idle_seconds": 60},
            outbox={"retry_initial_seconds": 0.2, "retry_max_seconds": 0.5},
            destinations=[{"name": "nopm", "ae_title": "STANDIN", "host": "127.0.0.1",
                           "port": pacs.port}],
        )
        datasets = build_study(StudyOptions(style="siemens", study_key="refuse"))
        assert send(node.receiver.port, datasets) == [0] * len(datasets)
        study_uid = datasets[0].StudyInstanceUID

        wait_until(lambda: results_delivered(node, study_uid))
        (delivery,) = node.index.outbox.summaries(study_uid)
        assert delivery.delivered == RESULTS_PER_STUDY - 2 and delivery.failed == 2
        assert "refused" in delivery.failed_reason
        assert len(pacs.received) == RESULTS_PER_STUDY - 2
        time.sleep(1.5)  # well past the retry interval: refused rows are not retried
        rows = node.index.db.connection().execute(
            "SELECT attempts, state FROM outbox WHERE sop_class_uid = ?",
            (ParametricMapStorage,)).fetchall()
        assert [tuple(r) for r in rows] == [(1, "failed"), (1, "failed")]
        config = write_config(tmp_path / "s.toml", node.settings)
        table = subprocess.run([sys.executable, "-m", "marrownode", "status", "--config",
                                str(config)], capture_output=True, text=True, timeout=60)
        expected = f"destination nopm: delivered {RESULTS_PER_STUDY - 2} pending 0 failed 2"
        assert expected in table.stdout
    finally:
        pacs.stop()


def test_unreachable_destination_keeps_results_queued_with_next_try(node_factory) -> None:
    from tests.conftest import free_port

    node = node_factory(
        completion={"idle_seconds": 60},
        outbox={"retry_initial_seconds": 30, "retry_max_seconds": 60},
        destinations=[{"name": "down", "ae_title": "NOBODY", "host": "127.0.0.1",
                       "port": free_port()}],
    )
    datasets = build_study(StudyOptions(style="siemens", study_key="down"))
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    study_uid = datasets[0].StudyInstanceUID

    def tried() -> bool:
        deliveries = node.index.outbox.summaries(study_uid)
        return bool(deliveries) and deliveries[0].pending == RESULTS_PER_STUDY and (
            deliveries[0].next_attempt_at is not None) and (
            deliveries[0].next_attempt_at > time.time() + 5)

    wait_until(tried)
    (delivery,) = node.index.outbox.summaries(study_uid)
    assert delivery.pending == RESULTS_PER_STUDY
    assert delivery.delivered == 0 and delivery.failed == 0


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "marrownode", "demo", "--out",
                             str(tmp_path / "demo")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "threshold 20.0 %" in out and "below threshold" in out
    assert f"The stand-in PACS received {RESULTS_PER_STUDY} result files" in out
    assert len(list((tmp_path / "demo" / "pacs").glob("*.dcm"))) == RESULTS_PER_STUDY
    for name in ("overlay-preview.png", "summary-preview.png"):
        preview = tmp_path / "demo" / name
        assert preview.is_file() and preview.stat().st_size > 10_000, name
        assert f"{preview}" in out
    assert "Demo^Marrow" not in out + result.stderr


def test_series_go_out_while_later_ones_are_encoded_each_file_once(node_factory,
                                                                     tmp_path) -> None:
    import json

    from marrownode.synthetic.phantom import spine_phantom

    received_at: dict[str, float] = {}

    class TimedPACS(StandInPACS):
        def _store(self, event) -> int:
            received_at[str(event.request.AffectedSOPInstanceUID)] = time.time()
            return super()._store(event)

    pacs = TimedPACS(tmp_path / "pacs").start()
    try:
        node = node_factory(destinations=[{"name": "pacs", "ae_title": "STANDIN",
                                           "host": "127.0.0.1", "port": pacs.port}])
        datasets = build_study(StudyOptions(style="siemens", study_key="stream"),
                               spine_phantom(slices=24, rows=256, cols=192))
        assert send(node.receiver.port, datasets) == [0] * len(datasets)
        study_uid = datasets[0].StudyInstanceUID

        wait_until(lambda: results_delivered(node, study_uid))
        time.sleep(1.0)  # a second copy of anything would arrive now
        report = json.loads(node.index.studies.study(study_uid)["report"])
        outputs = [e for s in report["dixon_sets"] for e in s["outputs"]]
        assert len(outputs) == 1 + 2 + 2 * 24 + 24 + 1  # the summary page first
        assert sorted(pacs.received) == sorted(e["sop_instance_uid"] for e in outputs)
        # The parametric maps are written first and the overlay after them (the SR is built
        # beside the images, on the second core): the PACS had the maps before the last
        # overlay frame was even written.
        last_overlay = max((node.spool.results_dir(study_uid) / e["path"]).stat().st_mtime
                           for e in outputs if e["kind"] == "overlay")
        first_map = min(received_at[e["sop_instance_uid"]] for e in outputs
                        if e["kind"] == "parametric_map")
        assert first_map < last_overlay
    finally:
        pacs.stop()


def test_a_batch_of_only_refused_classes_is_a_refusal_not_a_network_failure(tmp_path) -> None:
    from marrownode.config import settings_from_mapping
    from marrownode.net.sender import OutgoingFile, send_batch
    from marrownode.pipeline import process_paths
    from marrownode.synthetic.studies import write_datasets

    write_datasets(build_study(StudyOptions(style="siemens", study_key="pm-only")),
                   tmp_path / "in")
    report = process_paths([tmp_path / "in"], tmp_path / "out", settings_from_mapping({}))
    maps = [e for e in report["studies"][0]["dixon_sets"][0]["outputs"]
            if e["kind"] == "parametric_map"]
    files = [OutgoingFile(i, tmp_path / "out" / e["path"], e["sop_class_uid"],
                          e["transfer_syntax_uid"]) for i, e in enumerate(maps)]
    pacs = StandInPACS(tmp_path / "pacs", refuse_sop_classes=[ParametricMapStorage]).start()
    try:
        results = send_batch(files, "127.0.0.1", pacs.port, "STANDIN", "MARROWNODE")
    finally:
        pacs.stop()
    assert [r.error for r in results] == ["context_refused"] * len(maps) == ["context_refused"] * 2
    closed = send_batch(files, "127.0.0.1", pacs.port, "STANDIN", "MARROWNODE", timeout=2)
    assert [r.error for r in closed] == ["no_association"] * 2


def test_the_reactor_is_parked_before_each_c_store(tmp_path) -> None:
    """pynetdicom's association reactor can steal a C-STORE response right after the previous
    C-STORE released it (then the sender waits out the DIMSE timeout). park_reactor leaves it
    stopped at its closed checkpoint; if a pynetdicom upgrade drops what it relies on, this
    fails instead of the race coming back unnoticed."""
    from pynetdicom import AE

    from marrownode.net.pynetdicom_adapter import park_reactor

    source = build_study(StudyOptions(style="siemens", study_key="park"))[0]
    pacs = StandInPACS(tmp_path / "pacs").start()
    ae = AE(ae_title="MARROWNODE")
    ae.add_requested_context(source.SOPClassUID, source.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", pacs.port, ae_title="STANDIN")
    try:
        assert association.is_established
        assert association.send_c_store(source).Status == 0  # leaves the reactor released
        assert association._reactor_checkpoint.is_set()
        park_reactor(association)
        assert not association._reactor_checkpoint.is_set()
        for _ in range(20):  # parked: it stays at the checkpoint, round after round
            assert association._is_paused
            time.sleep(0.001)
    finally:
        association.release()
        pacs.stop()
