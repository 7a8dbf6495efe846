"""A good citizen in a real PACS (#16): new content gets new UIDs and says which run made it,
and a report made with other settings names the one it supersedes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom import dcmread

from marrownode.config import content_digest
from marrownode.node import Node
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import require_binary, wait_until
from tests.scu import send


def sr_of(node: Node, study_uid: str) -> tuple[Path, dict]:
    report = __import__("json").loads(node.index.studies.study(study_uid)["report"])
    (dixon_set,) = report["dixon_sets"]
    (entry,) = [e for e in dixon_set["outputs"] if e["kind"] == "sr"]
    return node.spool.results_dir(study_uid) / entry["path"], entry


def dsrdump(path: Path) -> str:
    return subprocess.run([require_binary("/usr/bin/dsrdump"), "+Pl", str(path)],
                          capture_output=True, text=True, timeout=60).stdout


def analysed_again(node: Node, study_uid: str, before: float) -> bool:
    study = node.index.studies.study(study_uid) or {}
    return study.get("state") == "analysed" and study.get("updated_at", 0) > before


def test_other_settings_make_new_results_that_supersede_the_earlier_report(node_factory,
                                                                          tmp_path) -> None:
    node = node_factory(completion={"idle_seconds": 60})
    datasets = build_study(StudyOptions(style="siemens", study_key="supersede"))
    study_uid = datasets[0].StudyInstanceUID
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    wait_until(lambda: analysed_again(node, study_uid, 0), timeout=90)
    first_path, first = sr_of(node, study_uid)
    node.stop(grace_seconds=1.0)

    thresholds = [{"field_strength_t": 1.5, "signal_loss_percent": 10.0},
                  {"field_strength_t": 3.0, "signal_loss_percent": 15.0}]
    settings = node.settings.model_copy(update={"analysis": node.settings.analysis.model_copy(
        update={"thresholds": [type(node.settings.analysis.thresholds[0])(**t)
                               for t in thresholds]})})
    again = Node(settings)
    again.start()
    try:
        before = node.index.studies.study(study_uid)["updated_at"]
        assert send(again.receiver.port, datasets) == [0] * len(datasets)  # sent once more
        wait_until(lambda: analysed_again(again, study_uid, before), timeout=90)
        second_path, second = sr_of(again, study_uid)
    finally:
        again.stop(grace_seconds=1.0)

    assert second["sop_instance_uid"] != first["sop_instance_uid"]
    assert second["series_instance_uid"] != first["series_instance_uid"]
    sr = dcmread(second_path)
    (predecessor,) = sr.PredecessorDocumentsSequence
    (series,) = predecessor.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first["series_instance_uid"]
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first["sop_instance_uid"]
    # Which run made each report: the algorithm's version and the digest of its settings.
    assert f"settings digest {content_digest(settings)}" in dsrdump(second_path)
    assert f"settings digest {content_digest(node.settings)}" in dsrdump(first_path)
    earlier = dcmread(first_path)
    assert "PredecessorDocumentsSequence" not in earlier
    made = f"{sr.InstanceCreationDate}{sr.InstanceCreationTime}"
    assert made > f"{earlier.InstanceCreationDate}{earlier.InstanceCreationTime}"
    validated = subprocess.run([require_binary("/usr/bin/dciodvfy"), str(second_path)],
                               capture_output=True, text=True, timeout=120)
    errors = [line for line in (validated.stdout + validated.stderr).splitlines()
              if line.startswith("Error")]
    assert errors == []
