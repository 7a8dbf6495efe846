"""End to end: DCMTK storescu as the scanner, `marrownode serve` as a process, Orthanc as the PACS.

The results must appear in Orthanc under the source study — also when Orthanc is down at first,
when Orthanc itself forwards the study, and when the node is killed before sending.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marrownode.synthetic.studies import StudyOptions, build_study, extra_series, write_datasets
from tests.conftest import DCMTK, RESULTS_PER_STUDY, dcmtk_env, make_settings, require_binary
from tests.orthanc import Orthanc

EXPECTED_RESULT_INSTANCES = RESULTS_PER_STUDY
EXPECTED_RESULT_SERIES = 8  # summary, 2 PM, 2 derived MR, overlay, SEG, SR


def node_settings(tmp_path: Path, orthanc: Orthanc, **extra):
    sections = {
        "completion": {"idle_seconds": 60},
        "outbox": {"retry_initial_seconds": 1.0, "retry_max_seconds": 4.0},
        "destinations": [{"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                          "port": orthanc.dicom_port}],
        **extra,
    }
    return make_settings(tmp_path / "node", **sections)


def study_files(tmp_path: Path, key: str) -> tuple[list, Path]:
    options = StudyOptions(style="siemens", snr=40, study_key=key, patient_name="Émile^Zoë")
    datasets = build_study(options) + extra_series(options, "t2")
    folder = tmp_path / f"scanner-{key}"
    write_datasets(datasets, folder)
    return datasets, folder


def storescu(port: int, folder: Path) -> None:
    binary = require_binary(str(DCMTK / "storescu"))
    result = subprocess.run([binary, "-aet", "SCANNER", "-aec", "MARROWNODE", "+sd",
                             "127.0.0.1", str(port), str(folder)],
                            env=dcmtk_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def result_series(orthanc: Orthanc, study_uid: str) -> dict[str, int]:
    return {s["MainDicomTags"].get("SeriesDescription", ""): len(s["Instances"])
            for s in orthanc.series(study_uid)
            if s["MainDicomTags"].get("SeriesDescription", "").startswith("marrownode")}


def wait_for_results(orthanc: Orthanc, study_uid: str, timeout: float = 90) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    found: dict[str, int] = {}
    while time.monotonic() < deadline:
        found = result_series(orthanc, study_uid)
        if sum(found.values()) >= EXPECTED_RESULT_INSTANCES:
            return found
        time.sleep(0.5)
    raise AssertionError(f"results did not arrive in Orthanc: {found}")


def status(config: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "marrownode", "status", "--json", "--config",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_scanner_to_node_to_orthanc(tmp_path, orthanc_factory, serve_process) -> None:
    orthanc = orthanc_factory().start()
    settings = node_settings(tmp_path, orthanc)
    node = serve_process(settings).start(port=settings.node.port)
    datasets, folder = study_files(tmp_path, "e2e")
    storescu(settings.node.port, folder)
    study_uid = datasets[0].StudyInstanceUID
    found = wait_for_results(orthanc, study_uid)
    assert len(found) == EXPECTED_RESULT_SERIES
    assert sorted(found.values()) == [1, 1, 1, 1, 1, 12, 12, 12]
    # The source series are in the same Orthanc study: results sit beside them.
    assert orthanc.get(f"/studies/{orthanc.study_id(study_uid)}")["PatientMainDicomTags"][
        "PatientName"] == "Émile^Zoë"
    report = status(node.config)
    (study,) = report["studies"]
    assert study["state"] == "analysed"
    (delivery,) = study["deliveries"]
    assert delivery == {**delivery, "destination": "pacs", "delivered": EXPECTED_RESULT_INSTANCES,
                        "pending": 0, "failed": 0}


def test_orthanc_forwards_a_study_to_the_node(tmp_path, orthanc_factory, serve_process) -> None:
    settings_probe = make_settings(tmp_path / "probe")
    orthanc = orthanc_factory(modalities={
        "marrownode": ["MARROWNODE", "127.0.0.1", settings_probe.node.port]}).start()
    settings = node_settings(tmp_path, orthanc, node={"port": settings_probe.node.port})
    serve_process(settings).start(port=settings.node.port)
    datasets, folder = study_files(tmp_path, "forward")
    for path in sorted(folder.iterdir()):
        orthanc.upload(path)
    study_id = orthanc.study_id(datasets[0].StudyInstanceUID)
    orthanc.post("/modalities/marrownode/store", {"Resources": [study_id], "Synchronous": True})
    found = wait_for_results(orthanc, datasets[0].StudyInstanceUID)
    assert len(found) == EXPECTED_RESULT_SERIES


def test_pacs_down_at_first_results_arrive_once(tmp_path, orthanc_factory, serve_process) -> None:
    orthanc = orthanc_factory()  # ports reserved, not started yet
    settings = node_settings(tmp_path, orthanc)
    node = serve_process(settings).start(port=settings.node.port)
    datasets, folder = study_files(tmp_path, "down")
    storescu(settings.node.port, folder)
    started = time.monotonic()
    deadline = started + 30
    while time.monotonic() < deadline:
        deliveries = status(node.config)["studies"][0]["deliveries"]
        if deliveries and deliveries[0]["pending"] == EXPECTED_RESULT_INSTANCES:
            break
        time.sleep(0.5)
    assert deliveries[0]["next_attempt_at"] is not None and deliveries[0]["delivered"] == 0
    time.sleep(max(0.0, 8 - (time.monotonic() - started)))  # a few failed attempts first
    orthanc.start()
    found = wait_for_results(orthanc, datasets[0].StudyInstanceUID)
    assert len(found) == EXPECTED_RESULT_SERIES
    time.sleep(3)  # any duplicate send would land now
    assert orthanc.instance_count() == EXPECTED_RESULT_INSTANCES  # only our results
    (delivery,) = status(node.config)["studies"][0]["deliveries"]
    assert delivery["delivered"] == EXPECTED_RESULT_INSTANCES and delivery["pending"] == 0
    log = node.log.read_text()
    assert "Émile" not in log and "Zoë" not in log and "MN-0001" not in log


def test_node_killed_before_sending_delivers_after_restart(
    tmp_path, orthanc_factory, serve_process
) -> None:
    orthanc = orthanc_factory()
    settings = node_settings(tmp_path, orthanc, outbox={"retry_initial_seconds": 60.0,
                                                        "retry_max_seconds": 60.0})
    node = serve_process(settings).start(port=settings.node.port)
    datasets, folder = study_files(tmp_path, "kill")
    storescu(settings.node.port, folder)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        studies = status(node.config)["studies"]
        if studies and studies[0]["deliveries"]:
            break
        time.sleep(0.3)
    node.signal(signal.SIGKILL)
    node.wait(10)
    orthanc.start()
    restarted = serve_process(settings).start(port=settings.node.port)
    found = wait_for_results(orthanc, datasets[0].StudyInstanceUID)
    assert len(found) == EXPECTED_RESULT_SERIES
    time.sleep(3)
    assert orthanc.instance_count() == EXPECTED_RESULT_INSTANCES
    (delivery,) = status(restarted.config)["studies"][0]["deliveries"]
    assert delivery["delivered"] == EXPECTED_RESULT_INSTANCES


# The forwarding rule as sites write it (Orthanc Book, "Lua scripting": auto-routing of stable
# studies), through the REST API's store job (this Orthanc's Lua SendToModality could not read
# the attachments it had just stored: "Unable to read attachment").
FORWARD_STABLE_STUDIES = """
function OnStableStudy(studyId, tags, metadata)
  RestApiPost('/modalities/marrownode/store',
              '{"Resources": ["' .. studyId .. '"], "Synchronous": false}')
end
"""


# The README's recipe: forward the stable study's series, except the node's own results.
FORWARD_STABLE_STUDIES_BUT_OURS = """
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local sources = {}
  for i, s in pairs(series) do
    local description = s['MainDicomTags']['SeriesDescription'] or ''
    if string.sub(description, 1, 11) ~= 'marrownode ' then
      table.insert(sources, '"' .. s['ID'] .. '"')
    end
  end
  if #sources > 0 then
    RestApiPost('/modalities/marrownode/store',
                '{"Resources": [' .. table.concat(sources, ',') .. '], "Synchronous": false}')
  end
end
"""


@pytest.mark.parametrize("rule", [FORWARD_STABLE_STUDIES, FORWARD_STABLE_STUDIES_BUT_OURS],
                         ids=["whole-study", "readme-recipe"])
def test_an_orthanc_rule_forwarding_stable_studies_makes_no_loop(tmp_path, orthanc_factory,
                                                                  serve_process, rule) -> None:
    """The ordinary rule "forward every stable study to marrownode" with OverwriteInstances:
    Orthanc forwards the study, then again with our results in it; the node recognises the
    same sources and settings, analyses once and sends once, and the study stays still."""
    from tests.conftest import free_port
    from tests.integration.test_operations import metrics

    probe = make_settings(tmp_path / "probe")
    orthanc = orthanc_factory(
        modalities={"marrownode": ["MARROWNODE", "127.0.0.1", probe.node.port]},
        lua=rule, OverwriteInstances=True).start()
    http_port = free_port()
    settings = node_settings(tmp_path, orthanc, node={"port": probe.node.port},
                             http={"enabled": True, "port": http_port})
    node = serve_process(settings).start(port=settings.node.port)
    datasets, folder = study_files(tmp_path, "loop")
    for path in sorted(folder.iterdir()):
        orthanc.upload(path)
    study_uid = datasets[0].StudyInstanceUID
    wait_for_results(orthanc, study_uid)
    time.sleep(8)  # several StableAge periods: a loop would forward, analyse and send again
    values = metrics(http_port)
    assert values[("marrownode_analysis_duration_seconds_count", ())] == 1
    assert values[("marrownode_delivered_total", (("destination", "pacs"),))] == (
        EXPECTED_RESULT_INSTANCES)
    received = values[("marrownode_instances_received_total", ())]
    assert received >= 2 * len(datasets)  # the study came back (with or without our results)
    time.sleep(3)
    assert metrics(http_port)[("marrownode_instances_received_total", ())] == received
    assert "event=study_unchanged" in node.log.read_text()


def test_the_recipe_gives_results_within_seconds_of_orthancs_forward(tmp_path, orthanc_factory,
                                                                     serve_process) -> None:
    """The README's recipe with a study whose series promise no image count (anonymised
    dual-echo, as PACS exports often are): Orthanc forwards it once stable, the node has
    completion.whole_study_senders = ["ORTHANC"], and the results are in Orthanc long before
    the node's 60 s idle timer could have decided (it would have waited for it before)."""
    probe = make_settings(tmp_path / "probe")
    orthanc = orthanc_factory(
        modalities={"marrownode": ["MARROWNODE", "127.0.0.1", probe.node.port]},
        lua=FORWARD_STABLE_STUDIES_BUT_OURS, OverwriteInstances=True).start()
    settings = node_settings(tmp_path, orthanc, node={"port": probe.node.port},
                             completion={"idle_seconds": 60,
                                         "whole_study_senders": [orthanc.ae_title]})
    node = serve_process(settings).start(port=settings.node.port)
    datasets = build_study(StudyOptions(style="anonymised_dual_echo", study_key="recipe"))
    assert not any("ImagesInAcquisition" in d for d in datasets)
    folder = tmp_path / "scanner-recipe"
    write_datasets(datasets, folder)
    for path in sorted(folder.iterdir()):
        orthanc.upload(path)
    uploaded = time.monotonic()
    wait_for_results(orthanc, datasets[0].StudyInstanceUID, timeout=40)
    seconds = time.monotonic() - uploaded
    assert seconds < 40  # Orthanc's StableAge (1 s here) + forward + analysis, no idle wait
    history = subprocess.run([sys.executable, "-m", "marrownode", "history",
                              str(datasets[0].StudyInstanceUID), "--config", str(node.config)],
                             capture_output=True, text=True, timeout=60)
    assert "complete by content: 1 series sent whole by a PACS peer" in history.stdout
