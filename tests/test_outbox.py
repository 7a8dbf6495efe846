"""Outbox and sender: batches, refusals recorded not retried, backoff, status visibility."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pydicom.uid import ParametricMapStorage

from marrownode.net.standin import StandInPACS
from marrownode.services import Deliverer
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import wait_until, write_config
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

        def settled() -> bool:
            deliveries = node.index.deliveries(study_uid)
            return bool(deliveries) and deliveries[0]["pending"] == 0

        wait_until(settled)
        (delivery,) = node.index.deliveries(study_uid)
        assert delivery["delivered"] == 37 and delivery["failed"] == 2
        assert "refused" in delivery["failed_reason"]
        assert len(pacs.received) == 37
        time.sleep(1.5)  # well past the retry interval: refused rows are not retried
        rows = node.index._connection().execute(
            "SELECT attempts, state FROM outbox WHERE sop_class_uid = ?",
            (ParametricMapStorage,)).fetchall()
        assert [tuple(r) for r in rows] == [(1, "failed"), (1, "failed")]
        config = write_config(tmp_path / "s.toml", node.settings)
        table = subprocess.run([sys.executable, "-m", "marrownode", "status", "--config",
                                str(config)], capture_output=True, text=True, timeout=60)
        assert "destination nopm: delivered 37 pending 0 failed 2" in table.stdout
    finally:
        pacs.stop()


def test_backoff_grows_exponentially_with_jitter_and_is_capped(node_factory) -> None:
    node = node_factory(outbox={"retry_initial_seconds": 5, "retry_max_seconds": 600})
    deliverer = Deliverer(node, seed=1)
    for attempts, base in [(0, 5), (1, 10), (3, 40), (10, 600), (30, 600)]:
        values = [deliverer.backoff(attempts) for _ in range(200)]
        assert min(values) >= base * 0.5 and max(values) <= base
        assert max(values) - min(values) > base * 0.2  # jitter spreads retries


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
        deliveries = node.index.deliveries(study_uid)
        return bool(deliveries) and deliveries[0]["next_attempt_at"] is not None and (
            deliveries[0]["next_attempt_at"] > time.time() + 5)

    wait_until(tried)
    (delivery,) = node.index.deliveries(study_uid)
    assert delivery["pending"] == 39 and delivery["delivered"] == 0 and delivery["failed"] == 0


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "marrownode", "demo", "--out",
                             str(tmp_path / "demo")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "threshold 20.0 %" in out and "below threshold" in out
    assert "The stand-in PACS received 39 result files" in out
    assert len(list((tmp_path / "demo" / "pacs").glob("*.dcm"))) == 39
    preview = tmp_path / "demo" / "overlay-preview.png"
    assert preview.is_file() and preview.stat().st_size > 10_000
    assert "Demo^Marrow" not in out + result.stderr
