"""Operating the node: /healthz, /metrics after real transfers, retention, logs without PHI."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from marrownode.net.standin import StandInPACS
from marrownode.synthetic.studies import StudyOptions, build_study, extra_series
from tests.conftest import free_port, make_settings, results_delivered, wait_until
from tests.scu import can_associate, send, storage_ae


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metrics(port: int) -> dict[tuple[str, tuple], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    values = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_move_by_the_right_amounts(node_factory, tmp_path) -> None:
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        http_port = free_port()
        node = node_factory(
            http={"enabled": True, "port": http_port},
            node={"allowed_calling_aets": ["SCANNER"]},
            destinations=[{"name": "pacs", "ae_title": "STANDIN", "host": "127.0.0.1",
                           "port": pacs.port}],
        )
        before = metrics(http_port)
        assert before[("marrownode_instances_received_total", ())] == 0
        assert before[("marrownode_associations_open", ())] == 0
        held = storage_ae("SCANNER").associate("127.0.0.1", node.receiver.port,
                                               ae_title="MARROWNODE")
        assert held.is_established
        assert metrics(http_port)[("marrownode_associations_open", ())] == 1
        held.release()
        options = StudyOptions(style="siemens", study_key="metrics")
        datasets = build_study(options) + extra_series(options, "t2")
        assert send(node.receiver.port, datasets, calling="SCANNER") == [0] * len(datasets)
        assert not can_associate(node.receiver.port, calling="STRANGER")
        study_uid = datasets[0].StudyInstanceUID
        wait_until(lambda: results_delivered(node, study_uid))
        ttr = ("marrownode_time_to_result_seconds_count", (("destination", "pacs"),))
        wait_until(lambda: metrics(http_port).get(ttr, 0) >= 1)
        time.sleep(0.5)  # a second count of the same study would show by now
        after = metrics(http_port)
        sizes = sum(row.size_bytes for row in node.index.studies.instances(study_uid))
        assert after[("marrownode_instances_received_total", ())] == len(datasets) == 60
        assert after[("marrownode_bytes_received_total", ())] == sizes
        assert after[("marrownode_associations_total", (("result", "accepted"),))] == 2
        assert after[("marrownode_associations_open", ())] == 0
        assert after[("marrownode_associations_total", (("result", "rejected"),))] == 1
        assert after[("marrownode_dixon_sets", (("state", "analysed"),))] == 1
        assert after[("marrownode_studies", (("state", "analysed"),))] == 1
        assert after[("marrownode_analysis_duration_seconds_count", ())] == 1
        assert after[("marrownode_time_to_result_seconds_count",
                      (("destination", "pacs"),))] == 1
        assert after[("marrownode_outbox_depth", (("destination", "pacs"),))] == 0
        assert after[("marrownode_spool_free_bytes", ())] > 0
        node.spool.free_space_probe = lambda _: 0
        assert send(node.receiver.port, datasets[:2], calling="SCANNER") == [0xA700, 0xA700]
        node.spool.free_space_probe = lambda _: 10**15
        final = metrics(http_port)
        assert final[("marrownode_cstore_failures_total", (("status", "0xA700"),))] == 2
        assert final[("marrownode_instances_received_total", ())] == 60
    finally:
        pacs.stop()


def test_healthz_follows_the_disk_watermark(node_factory) -> None:
    http_port = free_port()
    node = node_factory(http={"enabled": True, "port": http_port}, storage={"min_free_mb": 100})
    status, body = http_get(http_port, "/healthz")
    assert status == 200 and json.loads(body)["healthy"] is True
    node.spool.free_space_probe = lambda _: 50 * 1024 * 1024
    status, body = http_get(http_port, "/healthz")
    report = json.loads(body)
    assert status == 503 and report["failed"] == ["disk_above_watermark"]
    assert report["checks"]["listener_bound"] and report["checks"]["index_writable"]
    node.spool.free_space_probe = lambda _: 500 * 1024 * 1024
    assert http_get(http_port, "/healthz")[0] == 200
    assert http_get(http_port, "/nothing")[0] == 404
    status, body = http_get(http_port, "/status")
    assert status == 200 and json.loads(body)["instances"] == 0


def test_retention_removes_exactly_what_is_due(node_factory, tmp_path) -> None:
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = node_factory(
            storage={"retention_hours": 1.0},
            completion={"idle_seconds": 6.0},
            destinations=[{"name": "pacs", "ae_title": "STANDIN", "host": "127.0.0.1",
                           "port": pacs.port}],
        )
        done = build_study(StudyOptions(style="siemens", study_key="done"))
        no_dixon = extra_series(StudyOptions(study_key="t2only"), "t2")
        incomplete = [ds for ds in build_study(StudyOptions(style="siemens", study_key="part"))
                      if not (ds.SeriesDescription.endswith("_opp") and ds.InstanceNumber > 10)]
        for datasets in (done, no_dixon):
            assert send(node.receiver.port, datasets) == [0] * len(datasets)
        wait_until(lambda: results_delivered(node, done[0].StudyInstanceUID))
        wait_until(lambda: node.index.studies.study(no_dixon[0].StudyInstanceUID)["state"]
                   == "no_dixon_set")
        # A fourth study whose results cannot be delivered stays pending.
        pacs.stop()
        pending = build_study(StudyOptions(style="ge_lava", study_key="pending"))
        assert send(node.receiver.port, pending) == [0] * len(pending)
        studies = node.index.studies
        wait_until(lambda: bool(node.index.outbox.summaries(pending[0].StudyInstanceUID))
                   and studies.study(pending[0].StudyInstanceUID)["state"] == "analysed")
        # The incomplete one comes last: it waits only until its idle timer runs out, and an
        # analysis slower than that timer (a busy machine) must not end its wait before the
        # sweeps below.
        assert send(node.receiver.port, incomplete) == [0] * len(incomplete)
        wait_until(lambda: studies.study(incomplete[0].StudyInstanceUID)["state"] == "waiting",
                   interval=0.02)
        sweeper = node.retention
        now = time.time()
        assert sweeper.sweep(now) == []
        removed = sweeper.sweep(now + 3600 + 5)
        assert sorted(removed) == sorted([done[0].StudyInstanceUID,
                                          no_dixon[0].StudyInstanceUID])
        for study_uid in removed:
            assert node.index.studies.study(study_uid) is None
            assert node.index.studies.instances(study_uid) == []
            assert node.index.outbox.summaries(study_uid) == []
        assert node.index.studies.study(incomplete[0].StudyInstanceUID)["state"] == "waiting"
        remaining = {s["study_instance_uid"] for s in node.index.status()["studies"]}
        assert remaining == {incomplete[0].StudyInstanceUID, pending[0].StudyInstanceUID}
        files = {p.name for p in node.spool.data_dir.rglob("*.dcm")}
        assert files == {f"{ds.SOPInstanceUID}.dcm" for ds in incomplete + pending}
        results = node.settings.storage.root / "results"
        assert sorted(p.name for p in results.iterdir()) == [pending[0].StudyInstanceUID]
    finally:
        pacs.stop()


def _run_and_read_log(serve_process, tmp_path: Path, env: dict[str, str], **logging) -> str:
    settings = make_settings(tmp_path / f"data-{len(env)}-{len(logging)}",
                             completion={"idle_seconds": 60}, logging=logging)
    server = serve_process(settings, env=env).start(port=settings.node.port)
    options = StudyOptions(style="siemens", study_key="logs", patient_name="Secret^Person",
                           patient_id="PID-4242")
    datasets = build_study(options)
    assert send(settings.node.port, datasets) == [0] * len(datasets)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "event=analysis_done" not in server.log.read_text() \
            and '"event": "analysis_done"' not in server.log.read_text():
        time.sleep(0.2)
    server.stop()
    return server.log.read_text()


def test_logs_are_one_event_per_line_without_phi(serve_process, tmp_path) -> None:
    text = _run_and_read_log(serve_process, tmp_path, {})
    lines = text.strip().splitlines()
    assert any("event=analysis_done" in line for line in lines)
    assert all(line.startswith("ts=") and " level=" in line for line in lines), lines[:3]
    assert "Secret" not in text and "PID-4242" not in text


def test_json_logs_under_journald_have_no_timestamps(serve_process, tmp_path) -> None:
    text = _run_and_read_log(serve_process, tmp_path, {"JOURNAL_STREAM": "8:1234"},
                             format="json")
    records = [json.loads(line) for line in text.strip().splitlines()]
    assert records and all("ts" not in r and r["level"] for r in records)
    assert any(r.get("event") == "analysis_done" for r in records)
    assert "Secret" not in text and "PID-4242" not in text


def test_phi_only_with_the_switch(serve_process, tmp_path) -> None:
    text = _run_and_read_log(serve_process, tmp_path, {}, include_phi=True)
    assert "PID-4242" in text
