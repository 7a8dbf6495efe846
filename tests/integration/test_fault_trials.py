"""Fault trials (#15) as an operator's worst week would go, bounded for CI: kill -9 of
`marrownode serve` at random points of an ingest, and mid-delivery to Orthanc."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

from pydicom import dcmread

from marrownode.store.database import index_path
from marrownode.store.index import Index
from marrownode.synthetic.phantom import spine_phantom
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import make_settings, wait_until
from tests.integration.test_end_to_end import (
    EXPECTED_RESULT_INSTANCES,
    node_settings,
    result_series,
    status,
    storescu,
    study_files,
)
from tests.integration.test_lifecycle import send_until_refused

#: Trials per run; the seed is printed so that a failing run can be repeated.
INGEST_TRIALS = 6


def test_kill_9_at_random_points_of_ingest_loses_nothing_acknowledged(serve_process,
                                                                       tmp_path) -> None:
    seed = int(os.environ.get("MARROWNODE_TRIAL_SEED", time.time_ns() % 100_000))
    print(f"trial seed {seed} (MARROWNODE_TRIAL_SEED to repeat)")
    chance = random.Random(seed)
    settings = make_settings(tmp_path / "data", completion={"idle_seconds": 600})
    acknowledged: list[str] = []
    study_uids = []
    for trial in range(INGEST_TRIALS):
        server = serve_process(settings).start(port=settings.node.port)  # recovers the last
        datasets = build_study(StudyOptions(study_key=f"kill{trial}"),
                               spine_phantom(slices=40, rows=96, cols=96))
        study_uids.append(datasets[0].StudyInstanceUID)
        started = threading.Event()
        sender = threading.Thread(target=send_until_refused,
                                  args=(settings.node.port, datasets, acknowledged, started))
        sender.start()
        assert started.wait(30)
        time.sleep(chance.uniform(0.0, 0.5))
        server.signal(signal.SIGKILL)
        server.wait(30)
        sender.join(60)
    server = serve_process(settings).start(port=settings.node.port)
    server.stop()

    root = settings.storage.root
    index = Index(index_path(root))
    rows = {row.sop_instance_uid: row for uid in study_uids
            for row in index.studies.instances(uid)}
    lost = [uid for uid in acknowledged if uid not in rows]
    assert not lost, f"acknowledged but not indexed (seed {seed}): {lost}"
    for uid in acknowledged:
        assert dcmread(rows[uid].path, stop_before_pixels=True).SOPInstanceUID == uid
    assert all(Path(row.path).is_file() for row in rows.values()), "a row without its file"
    assert not list((root / "tmp").iterdir()), "temp files left after recovery"
    spool_files = {p for p in (root / "spool").rglob("*.dcm")}
    assert spool_files == {Path(row.path) for row in rows.values()}, "a file without its row"
    assert len(acknowledged) >= INGEST_TRIALS  # every trial got some instances in


def test_kill_9_mid_delivery_leaves_each_result_once_in_orthanc(tmp_path, orthanc_factory,
                                                                 serve_process) -> None:
    """Killed while the first result series are in Orthanc and later ones are still being
    encoded and sent: after the restart every result is in Orthanc, each UID once."""
    orthanc = orthanc_factory().start()
    settings = node_settings(tmp_path, orthanc)
    server = serve_process(settings).start(port=settings.node.port)
    datasets, folder = study_files(tmp_path, "kill-delivery")
    study_uid = datasets[0].StudyInstanceUID
    storescu(settings.node.port, folder)
    wait_until(lambda: sum(result_series(orthanc, study_uid).values()) > 0, timeout=90)
    server.signal(signal.SIGKILL)
    server.wait(30)
    partial = sum(result_series(orthanc, study_uid).values())
    assert partial < EXPECTED_RESULT_INSTANCES, "killed too late to be a mid-delivery trial"

    server = serve_process(settings).start(port=settings.node.port)
    wait_until(lambda: sum(result_series(orthanc, study_uid).values())
               >= EXPECTED_RESULT_INSTANCES, timeout=120)
    time.sleep(2.0)  # anything sent twice under new UIDs would show up now
    found = result_series(orthanc, study_uid)
    assert sum(found.values()) == EXPECTED_RESULT_INSTANCES
    instances = [orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
                 for series in orthanc.series(study_uid)
                 if series["MainDicomTags"].get("SeriesDescription", "").startswith("marrownode")
                 for i in series["Instances"]]
    assert len(instances) == len(set(instances)) == EXPECTED_RESULT_INSTANCES
    wait_until(lambda: status(server.config)["studies"][0]["deliveries"][0]["pending"] == 0,
               timeout=60)
    server.stop()
