"""The administrator's command line (#16): a default configuration, echo as an operator uses
it, a status that says what the operator needs, and no traceback into a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import free_port, wait_until, write_config
from tests.scu import send


def marrownode(*args: str, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "marrownode", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_status_reads_the_config_named_by_the_environment(node_factory, tmp_path) -> None:
    node = node_factory(completion={"idle_seconds": 60})
    datasets = build_study(StudyOptions(style="siemens", study_key="env"))
    assert send(node.receiver.port, datasets[:2]) == [0, 0]
    config = write_config(tmp_path / "node.toml", node.settings)
    found = marrownode("status", env={"MARROWNODE_CONFIG": str(config)})
    assert found.returncode == 0, found.stderr
    assert "instances: 2" in found.stdout
    missing = marrownode("status", env={"MARROWNODE_CONFIG": str(tmp_path / "nowhere.toml")})
    assert missing.returncode == 2 and "nowhere.toml" in missing.stderr


def test_echo_passes_the_nodes_own_allow_list_and_echoes_any_host(node_factory,
                                                                   tmp_path) -> None:
    node = node_factory(node={"allowed_calling_aets": ["SCANNER1"]})
    config = str(write_config(tmp_path / "node.toml", node.settings))
    itself = marrownode("echo", "--config", config)
    assert itself.returncode == 0, itself.stderr
    assert "from SCANNER1: status 0x0000" in itself.stdout
    port = str(node.receiver.port)
    ad_hoc = marrownode("echo", "--config", config, "--aet", "SCANNER1", "--aec", "MARROWNODE",
                        "127.0.0.1", port)
    assert ad_hoc.returncode == 0 and "MARROWNODE@127.0.0.1" in ad_hoc.stdout
    refused = marrownode("echo", "--config", config, "--aet", "STRANGER", "--aec", "MARROWNODE",
                         "127.0.0.1", port)
    assert refused.returncode == 1 and "calling AE STRANGER" in refused.stderr
    bad = marrownode("echo", "--config", config, "127.0.0.1", "http")
    assert bad.returncode == 2 and "port must be a number" in bad.stderr


def test_text_status_names_studies_and_says_when_the_next_try_is(node_factory,
                                                                 tmp_path) -> None:
    node = node_factory(
        completion={"idle_seconds": 60},
        outbox={"retry_initial_seconds": 60, "retry_max_seconds": 120},
        destinations=[{"name": "away", "ae_title": "AWAY", "host": "127.0.0.1",
                       "port": free_port()}])
    datasets = build_study(StudyOptions(style="siemens", study_key="named"))
    for ds in datasets:
        ds.AccessionNumber, ds.StudyDescription = "ACC-4711", "MR spine"
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    wait_until(lambda: node.index.outbox.destination("away").failures >= 1, timeout=90)
    config = str(write_config(tmp_path / "node.toml", node.settings))
    table = marrownode("status", "--config", config)
    assert table.returncode == 0, table.stderr
    assert "accession ACC-4711" in table.stdout and "description MR spine" in table.stdout
    assert "destination away: not answering" in table.stdout and "next try" in table.stdout
    # the peer's reason, not a code: nothing listens on that port
    assert "last error no association: connection refused by 127.0.0.1:" in table.stdout


def test_status_into_a_closed_pipe_ends_quietly(node_factory, tmp_path: Path) -> None:
    node = node_factory()
    config = write_config(tmp_path / "node.toml", node.settings)
    datasets = build_study(StudyOptions(style="siemens", study_key="pipe"))
    assert send(node.receiver.port, datasets[:1]) == [0]
    # `| true`: the reader is gone before the node writes (the write meets a closed pipe).
    piped = subprocess.run(
        f"{sys.executable} -m marrownode status --json --config {config} | true",
        shell=True, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr
