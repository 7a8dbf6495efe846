"""The operator's actions on the command line (#18, part) and the durable trail they leave:
pause and resume a destination, re-analyse and delete a study, read a study's history."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from marrownode import __version__
from marrownode.net.standin import StandInPACS
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import RESULTS_PER_STUDY, results_delivered, wait_until, write_config
from tests.scu import send


def cli(config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "marrownode", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """A loopback HTTP receiver for webhooks: its URL and the JSON bodies it was sent."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import free_port

    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_pause_resume_reanalyse_delete_and_the_trail(node_factory, tmp_path) -> None:
    pacs = StandInPACS(tmp_path / "pacs").start()
    try:
        node = node_factory(completion={"idle_seconds": 60},
                            destinations=[{"name": "pacs", "ae_title": "STANDIN",
                                           "host": "127.0.0.1", "port": pacs.port}])
        config = write_config(tmp_path / "node.toml", node.settings)
        assert node.metrics.registry.get_sample_value(
            "marrownode_build_info", {"version": __version__, "algorithm_version": "1"}) == 1
        assert cli(config, "pause", "pacs").returncode == 0
        datasets = build_study(StudyOptions(style="siemens", study_key="actions"))
        study_uid = datasets[0].StudyInstanceUID
        assert send(node.receiver.port, datasets) == [0] * len(datasets)
        wait_until(lambda: (node.index.studies.study(study_uid) or {}).get("state")
                   == "analysed", timeout=90)
        time.sleep(2.0)
        assert pacs.received == []  # paused: nothing sent, nothing failed
        status = cli(config, "status")
        assert "destination pacs: paused by an operator" in status.stdout
        assert cli(config, "resume", "pacs").returncode == 0
        wait_until(lambda: results_delivered(node, study_uid), timeout=30)
        delivered = len(pacs.received)
        assert delivered == RESULTS_PER_STUDY

        assert cli(config, "reanalyse", study_uid).returncode == 0
        wait_until(lambda: sum(e["kind"] == "analysed"
                               for e in node.index.studies.events(study_uid)) == 2, timeout=90)
        history = cli(config, "history", study_uid)
        assert history.returncode == 0
        kinds = [line.split("\t")[1] for line in history.stdout.splitlines()]
        assert kinds[0] == "received" and f"{len(datasets)} instance(s) from " in history.stdout
        assert {"received", "analysing", "analysed", "delivery", "action"} <= set(kinds)
        assert "reanalyse (by " in history.stdout and "on the command line)" in history.stdout
        assert "analysed again at an operator's request" in history.stdout  # not "idle 60 s"
        assert f"pacs: {RESULTS_PER_STUDY} delivered, 0 to retry, 0 failed" in history.stdout

        refused = cli(config, "delete", study_uid)
        assert refused.returncode == 2 and "--yes" in refused.stderr
        wait_until(lambda: results_delivered(node, study_uid), timeout=60)
        deleted = cli(config, "delete", study_uid, "--yes")
        assert deleted.returncode == 0, deleted.stderr
        assert node.index.studies.study(study_uid) is None
        assert not list(node.spool.data_dir.glob("*"))
        assert cli(config, "history", study_uid).returncode == 1
    finally:
        pacs.stop()


def test_webhooks_are_told_of_failures_for_good_without_patient_data(
        node_factory, tmp_path, monkeypatch, webhook_receiver) -> None:
    import json

    from marrownode.services import analysis_record

    url, received = webhook_receiver
    pacs = StandInPACS(tmp_path / "pacs", ae_title="STANDIN")
    pacs.ae.require_called_aet = True
    pacs.start()
    monkeypatch.setattr(analysis_record, "RETRY_BASE_SECONDS", 0.2)
    try:
        node = node_factory(
            completion={"idle_seconds": 60},
            destinations=[{"name": "pacs", "ae_title": "WRONG", "host": "127.0.0.1",
                           "port": pacs.port}],
            webhooks=[{"url": url}])
        datasets = build_study(StudyOptions(style="siemens", study_key="hooked",
                                            patient_name="Secret^Patient"))
        assert send(node.receiver.port, datasets) == [0] * len(datasets)
        wait_until(lambda: any(r["event"] == "delivery_failed" for r in received), timeout=90)
        (failed,) = [r for r in received if r["event"] == "delivery_failed"][:1]
        assert failed["destination"] == "pacs" and "called AE title" in failed["reason"]
        assert failed["study_instance_uid"] == datasets[0].StudyInstanceUID

        node.worker.time_limit_seconds = 0.01
        doomed = build_study(StudyOptions(style="siemens", study_key="hooked-doomed",
                                          patient_name="Secret^Patient"))
        assert send(node.receiver.port, doomed) == [0] * len(doomed)
        wait_until(lambda: any(r["event"] == "analysis_failed" for r in received), timeout=90)
        (analysis,) = [r for r in received if r["event"] == "analysis_failed"]
        assert analysis["study_instance_uid"] == doomed[0].StudyInstanceUID
        assert "ended the worker process 2 times" in analysis["reason"]
        assert "Secret" not in json.dumps(received)
    finally:
        pacs.stop()


def test_a_set_that_fails_in_the_node_is_failed_with_its_reason_everywhere(
        node_factory, webhook_receiver) -> None:
    """An RLE study whose in-phase fragments decode to garbage (structurally sound, so the
    receiver accepts it; the pixels cannot be read): that set fails alone. Its reason is in
    status (set state), the trail and a webhook; the study is analysed, not stuck."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    from marrownode.synthetic.studies import compress

    url, received = webhook_receiver
    node = node_factory(completion={"idle_seconds": 60}, webhooks=[{"url": url}])
    datasets = compress(build_study(StudyOptions(style="siemens", study_key="rle-broken")),
                        RLELossless)
    for dataset in datasets:
        if dataset.SeriesDescription.endswith("_in"):
            # a well-formed RLE header claiming one segment at offset 64, then nonsense
            header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)
            dataset.PixelData = encapsulate([header + bytes([0x81]) * 40])
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    study_uid = str(datasets[0].StudyInstanceUID)
    wait_until(lambda: (node.index.studies.study(study_uid) or {}).get("state")
               == "analysed", timeout=120)
    assert "1 failed" in node.index.studies.study(study_uid)["reason"]
    (row,) = node.index.status()["studies"][0]["dixon_sets"]
    assert row["state"] == "failed" and "Error" in row["reason"]
    trail = [e for e in node.index.studies.events(study_uid) if e["kind"] == "failed"]
    assert trail and row["reason"] in trail[0]["detail"]
    wait_until(lambda: any(r["event"] == "analysis_failed" for r in received), timeout=30)
    (hook,) = [r for r in received if r["event"] == "analysis_failed"]
    assert hook["study_instance_uid"] == study_uid and hook["reason"] == row["reason"]


def test_peer_strings_reach_logs_and_terminals_escaped(node_factory, tmp_path, caplog) -> None:
    """A study whose UID-like and text fields carry a newline, a fake key and a terminal
    escape: every log line stays one line with its keys its own, and `marrownode status` and
    `history` print the escapes as text, never to the terminal (issue 29, point 5)."""
    import json
    import logging

    from marrownode.logs import JSONFormatter, KeyValueFormatter

    node = node_factory(completion={"idle_seconds": 60})
    config = write_config(tmp_path / "node.toml", node.settings)
    datasets = build_study(StudyOptions(style="siemens", study_key="hostile-strings"))
    for ds in datasets:
        ds.StudyDescription = "LSPINE\x1b[2J\x1b[31mFAKE\nstudy 1.2.3 analysed"
        ds.AccessionNumber = "A1\x1b]0;owned\x07"
    study_uid = datasets[0].StudyInstanceUID
    with caplog.at_level(logging.INFO):
        assert send(node.receiver.port, datasets) == [0] * len(datasets)
        wait_until(lambda: (node.index.studies.study(study_uid) or {}).get("state")
                   == "analysed", timeout=90)
    status = cli(config, "status")
    assert status.returncode == 0
    assert "\x1b" not in status.stdout and "\x07" not in status.stdout
    assert "\\x1b[2J" in status.stdout and "FAKE\\nstudy" in status.stdout
    history = cli(config, "history", study_uid)
    assert "\x1b" not in history.stdout

    forged = logging.LogRecord("marrownode.test", logging.INFO, __file__, 1,
                               "event=set_ready study=%s sets=%d",
                               ("1.2.3\nts=0 level=error event=forged", 1), None)
    line = KeyValueFormatter(False).format(forged)
    assert "\n" not in line and line.count(" event=") == 1 and line.count(" level=") == 0
    body = json.loads(JSONFormatter(False).format(forged))
    assert body["level"] == "info" and body["event"] == "set_ready"
    assert body["study"].startswith("1.2.3\\nts=0")
    for record in caplog.records:  # the node's own lines about this study
        text = KeyValueFormatter(False).format(record)
        assert "\n" not in text.split(" exc=")[0]
