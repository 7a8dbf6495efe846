"""The results' space is budgeted: a node on a small file system (a real tmpfs) never fills
it with results, says why a study waits, answers `status` on a full disk, and goes on by
itself when space returns; an analysis that runs out of space waits instead of failing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from marrownode.net.standin import StandInPACS
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import RESULTS_PER_STUDY, results_delivered, wait_until, write_config
from tests.scu import send

MB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB tmpfs of its own (root only: CI and the developers' machines run as root)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _leave_free(disk: Path, free_bytes: int) -> Path:
    """A ballast file that leaves about free_bytes free on the disk."""
    ballast = disk / "ballast"
    size = shutil.disk_usage(disk).free - free_bytes
    with ballast.open("ab") as handle:
        os.posix_fallocate(handle.fileno(), 0, (ballast.stat().st_size if ballast.exists()
                                                else 0) + max(size, 0))
    return ballast


def _fill(disk: Path) -> None:
    """Take the last bytes of the disk."""
    with (disk / "last-bytes").open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def _node_on(node_factory, disk: Path, pacs: StandInPACS, min_free_mb: int):
    """A node whose storage is the small disk, delivering to pacs, warmed up."""
    node = node_factory(storage={"root": str(disk / "node"), "min_free_mb": min_free_mb},
                        completion={"idle_seconds": 60},
                        destinations=[{"name": "pacs", "ae_title": "STANDIN",
                                       "host": "127.0.0.1", "port": pacs.port}])
    wait_until(lambda: node.health().ok, timeout=60)  # the warm-up is done
    return node


def _study(node, key: str) -> str:
    datasets = build_study(StudyOptions(style="siemens", study_key=key))
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    return str(datasets[0].StudyInstanceUID)


def test_results_wait_for_space_and_go_out_when_it_returns(node_factory, small_disk,
                                                           tmp_path, caplog) -> None:
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = _node_on(node_factory, small_disk, pacs, min_free_mb=4)
        ballast = _leave_free(small_disk, 14 * MB)  # the images fit, their results do not
        with caplog.at_level(logging.INFO, logger="marrownode"):
            study_uid = _study(node, "space")

            def waiting() -> bool:
                study = node.index.studies.study(study_uid) or {}
                return study.get("state") == "waiting" and "disk space" in study["reason"]

            wait_until(waiting, timeout=30)
            # the node kept the watermark: it did not start writing results
            assert shutil.disk_usage(small_disk).free >= 4 * MB
            reason = node.index.studies.study(study_uid)["reason"]
            assert "results need about" in reason and "storage.min_free_mb" in reason

            _fill(small_disk)  # now the disk is full to the last byte
            config = write_config(tmp_path / "node.toml", node.settings)
            status = subprocess.run([sys.executable, "-m", "marrownode", "status", "--json",
                                     "--config", str(config)], capture_output=True, text=True,
                                    timeout=60)
            assert status.returncode == 0, status.stderr
            (listed,) = [s for s in json.loads(status.stdout)["studies"]
                         if s["study_instance_uid"] == study_uid]
            assert listed["state"] == "waiting" and "disk space" in listed["reason"]
            # a sender meets a transient refusal it can retry, not an abort without reason
            from tests.scu import storage_ae

            refused = storage_ae("SCANNER").associate("127.0.0.1", node.receiver.port,
                                                      ae_title="MARROWNODE")
            assert refused.is_rejected and not refused.is_aborted
            assert refused.acceptor.primitive.result == 0x02  # rejected-transient

            ballast.unlink()
            (small_disk / "last-bytes").unlink()
            wait_until(lambda: results_delivered(node, study_uid), timeout=90)
        study = node.index.studies.study(study_uid)
        assert study["analysis_attempts"] == 0  # waiting for space is not a failed attempt
        kinds = [event["kind"] for event in node.index.studies.events(study_uid)]
        assert "waiting" in kinds and "failed" not in kinds and "retry" not in kinds
        assert len(pacs.received) == RESULTS_PER_STUDY
        # one line when it began waiting, however many times it looked again
        waits = [r for r in caplog.records if "event=waiting_for_disk_space" in r.getMessage()]
        assert len(waits) == 1
        assert not [r for r in caplog.records if r.exc_info]  # no traceback at all
    finally:
        pacs.stop()


def test_an_analysis_that_runs_out_of_space_waits_and_resumes(node_factory, small_disk,
                                                              tmp_path, monkeypatch,
                                                              caplog) -> None:
    """The budget can be wrong (another process takes the space meanwhile): the worker then
    meets ENOSPC writing results. The study waits for space, no attempt is counted, and it
    is analysed and delivered once space returns."""
    from marrownode.services import assembler

    monkeypatch.setattr(assembler, "expected_result_bytes", lambda source_bytes: 0)
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = _node_on(node_factory, small_disk, pacs, min_free_mb=1)
        ballast = _leave_free(small_disk, 8 * MB)
        with caplog.at_level(logging.INFO, logger="marrownode"):
            study_uid = _study(node, "enospc")

            def out_of_space() -> bool:
                # the index may be full too: then the outcome waits in memory until it fits,
                # or until the result series written before the disk filled are queued
                study = node.index.studies.study(study_uid) or {}
                return (study.get("state") == "waiting" and "ran out of space" in
                        study["reason"]) or "event=analysis_unrecorded" in caplog.text or (
                    "event=series_unqueued" in caplog.text
                    and "event=assembler_paused reason=disk_full" in caplog.text)

            wait_until(out_of_space, timeout=60)
            assert node.index.studies.study(study_uid)["analysis_attempts"] == 0
            ballast.unlink()
            wait_until(lambda: results_delivered(node, study_uid), timeout=90)
        trail = node.index.studies.events(study_uid)
        kinds = [event["kind"] for event in trail]
        assert "failed" not in kinds and "retry" not in kinds
        assert any("ran out of space" in event["detail"] for event in trail)
        # the loops paused once on the full disk and said when they resumed: no storm
        assert caplog.text.count("event=assembler_paused") <= 1
        assert not [r for r in caplog.records if r.exc_info]
        assert node.index.studies.study(study_uid)["analysis_attempts"] == 0
        # The run that ran out of space may have delivered part of its results (which part,
        # or none, depends on whether the maps built beside the analysis or the page met the
        # full disk first); the run that succeeded wrote the same UIDs, so the PACS replaced
        # them: one object per UID, not more.
        assert len(pacs.received) >= RESULTS_PER_STUDY
        assert len(set(pacs.received)) == RESULTS_PER_STUDY
    finally:
        pacs.stop()


def test_result_series_the_full_index_refused_are_queued_when_it_takes_them(
        node_factory, tmp_path, monkeypatch, caplog) -> None:
    """The results are written but the index is full when their series are queued: the
    series are kept and queued once the index takes rows again, before the study's outcome
    is recorded, so every result reaches the PACS from the one analysis."""
    import sqlite3

    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = node_factory(completion={"idle_seconds": 60},
                            destinations=[{"name": "pacs", "ae_title": "STANDIN",
                                           "host": "127.0.0.1", "port": pacs.port}])
        wait_until(lambda: node.health().ok, timeout=60)
        outbox = node.index.outbox
        enqueue, refusals = outbox.enqueue, {"left": 3}

        def full_for_a_while(*args, **kwargs):
            if refusals["left"] > 0:
                refusals["left"] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return enqueue(*args, **kwargs)

        monkeypatch.setattr(outbox, "enqueue", full_for_a_while)
        with caplog.at_level(logging.INFO, logger="marrownode"):
            study_uid = _study(node, "fullindex")
            wait_until(lambda: results_delivered(node, study_uid), timeout=90)
        assert refusals["left"] == 0
        # Before: the 3 refused series were never sent.
        assert len(set(pacs.received)) == RESULTS_PER_STUDY
        assert "event=series_unqueued" in caplog.text
        assert "event=series_queued_late" in caplog.text
        assert node.index.studies.study(study_uid)["analysis_attempts"] == 0
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        pacs.stop()
