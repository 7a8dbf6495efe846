"""Lifecycle of `marrownode serve` as a process: SIGTERM mid-transfer, restart, status, systemd."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from marrownode.net.pynetdicom_adapter import park_reactor
from marrownode.store.database import index_path
from marrownode.store.index import Index
from marrownode.synthetic.phantom import spine_phantom
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import make_settings, wait_for_port, wait_until
from tests.scu import storage_ae

ROOT = Path(__file__).resolve().parents[2]


def send_until_refused(port: int, datasets, acknowledged: list[str], started: threading.Event):
    """Send one by one, recording every SOP UID the node acknowledged with 0x0000."""
    ae = storage_ae("SCANNER", datasets)
    association = ae.associate("127.0.0.1", port, ae_title="MARROWNODE")
    if not association.is_established:
        return
    try:
        for ds in datasets:
            park_reactor(association)
            status = association.send_c_store(ds)
            if not status or int(status.Status) != 0:
                break
            acknowledged.append(ds.SOPInstanceUID)
            started.set()
            if not association.is_established:
                break
    finally:
        if association.is_established:
            association.release()


def test_sigterm_during_transfer_loses_no_acknowledged_instance(serve_process, tmp_path) -> None:
    settings = make_settings(tmp_path / "data")
    server = serve_process(settings).start(port=settings.node.port)
    datasets = build_study(StudyOptions(study_key="sigterm"),
                           spine_phantom(slices=100, rows=128, cols=128))
    acknowledged: list[str] = []
    started = threading.Event()
    sender = threading.Thread(
        target=send_until_refused, args=(settings.node.port, datasets, acknowledged, started)
    )
    sender.start()
    assert started.wait(30)
    while len(acknowledged) < 20:
        time.sleep(0.01)
    server.signal(signal.SIGTERM)
    sender.join(60)
    assert server.wait(60) == 0
    assert len(acknowledged) >= 20
    index = Index(index_path(settings.storage.root))
    study_uid = datasets[0].StudyInstanceUID
    rows = {row.sop_instance_uid: row for row in index.studies.instances(study_uid)}
    for uid in acknowledged:
        assert uid in rows, "an acknowledged instance is missing from the index"
        assert dcmread(rows[uid].path).SOPInstanceUID == uid
    log = server.log.read_text()
    assert "event=stopping" in log and "event=stopped" in log


def test_restart_finds_everything_and_cleans_temp_files(serve_process, tmp_path) -> None:
    from tests.scu import send

    settings = make_settings(tmp_path / "data")
    server = serve_process(settings).start(port=settings.node.port)
    datasets = build_study(StudyOptions(study_key="restart"))
    assert send(settings.node.port, datasets[:10]) == [0] * 10
    server.stop()
    root = settings.storage.root
    # A crash mid-write leaves a temp file; a crash after the rename but before the index
    # commit leaves a spool file without a row: simulate both.
    (root / "tmp" / "half-written.part").write_bytes(b"\0" * 100)
    orphan = datasets[10]
    index = Index(index_path(root))
    target = next(Path(r.path) for r in index.studies.instances(orphan.StudyInstanceUID)).parent
    orphan.save_as(target / "orphan.dcm", enforce_file_format=True)
    index.close()
    server = serve_process(settings).start(port=settings.node.port)
    assert send(settings.node.port, datasets[11:12]) == [0]
    server.stop()
    assert not list((root / "tmp").iterdir())
    status = subprocess.run(
        [sys.executable, "-m", "marrownode", "status", "--json", "--config", str(server.config)],
        capture_output=True, text=True, timeout=60,
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["instances"] == 12
    (study,) = report["studies"]
    assert study["study_instance_uid"] == datasets[0].StudyInstanceUID
    assert study["instances"] == 12 and study["state"]
    table = subprocess.run(
        [sys.executable, "-m", "marrownode", "status", "--config", str(server.config)],
        capture_output=True, text=True, timeout=60,
    )
    assert "instances: 12" in table.stdout and datasets[0].StudyInstanceUID in table.stdout


def test_systemd_unit_parses() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = ROOT / "systemd" / "marrownode.service"
    text = unit.read_text()
    for directive in ("Type=notify", "WatchdogSec=", "StateDirectory=marrownode",
                      "ConfigurationDirectory=marrownode", "ProtectSystem=strict",
                      "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                      "RestrictAddressFamilies=", "CapabilityBoundingSet=\n",
                      "Restart=on-failure"):
        assert directive in text
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in result.stderr.splitlines()
                if "marrownode.service" in line and "Command /usr/local/bin/marrownode" not in line
                and "is not executable" not in line]
    assert not problems, result.stderr


def test_install_script_gives_a_unit_that_systemd_verifies(tmp_path) -> None:
    """scripts/install.sh into a staging root: a virtualenv in /opt/marrownode (Debian's Python
    refuses system-wide pip) whose scripts name /opt/marrownode (relocatable for packaging),
    the command, configuration, documentation with its images and unit in place, and
    `systemd-analyze verify` passes with ExecStart resolved inside the root. Then the service
    as systemd runs it: a dynamic user that cannot read /etc/marrownode/marrownode.toml
    (root:root 0640) reads the copy LoadCredential= hands it, and check-config and a short
    serve work as that user."""
    import os
    import shutil
    import tempfile

    stage = Path(tempfile.mkdtemp(prefix="marrownode-stage-", dir="/tmp"))
    os.chmod(stage, 0o755)  # the unprivileged user must reach the staged tree
    root = stage / "root"
    try:
        result = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--root",
                                 str(root), "--system-site-packages"], capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "installed: /opt/marrownode" in result.stdout
        python = root / "opt" / "marrownode" / "bin" / "python"
        command = root / "opt" / "marrownode" / "bin" / "marrownode"
        assert command.read_text().splitlines()[0] == "#!/opt/marrownode/bin/python"
        config = root / "etc" / "marrownode" / "marrownode.toml"
        assert (root / "usr" / "local" / "bin" / "marrownode").readlink() == Path(
            "/opt/marrownode/bin/marrownode")
        assert (config.stat().st_mode & 0o777) == 0o640
        unit_path = root / "etc" / "systemd" / "system" / "marrownode.service"
        unit = unit_path.read_text()
        documentation = unit.split("Documentation=file://", 1)[1].split()[0]
        assert (root / documentation.lstrip("/")).is_file()
        images = root / "usr" / "share" / "doc" / "marrownode" / "docs" / "images"
        assert sorted(p.name for p in images.iterdir()) == sorted(
            p.name for p in (ROOT / "docs" / "images").iterdir())
        assert "ExecStart=/opt/marrownode/bin/marrownode serve --config %d/marrownode.toml" in unit
        assert "LoadCredential=marrownode.toml:/etc/marrownode/marrownode.toml" in unit
        assert "RestartPreventExitStatus=2 3" in unit
        assert not (root / "usr" / "lib" / "systemd").exists()  # only borrowed for the check
        _run_as_the_service(python, root, config, unit_path, stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _run_as_the_service(python: Path, root: Path, config: Path, unit_path: Path,
                        stage: Path) -> None:
    """What systemd does for the unit, by hand: StateDirectory owned by the dynamic user, the
    credential a private 0400 copy of the configuration; then check-config and serve as that
    user (uid 65534 here)."""
    import os
    import shutil
    import signal

    from tests.conftest import free_port, wait_for_port

    uid = 65534
    state = root / "var" / "lib" / "marrownode"
    state.mkdir(parents=True)
    os.chown(state, uid, uid)
    port = free_port()
    edited = config.read_text().replace('root = "/var/lib/marrownode"', f'root = "{state}"')
    edited = edited.replace("port = 11112", f"port = {port}", 1)
    edited = edited.replace("[http]\nenabled = true", "[http]\nenabled = false")
    config.write_text(edited)  # as the administrator edits it (still root:root 0640)
    unit_for_stage = stage / "marrownode.service"
    unit_for_stage.write_text(unit_path.read_text().replace(
        "LoadCredential=marrownode.toml:/etc/marrownode/marrownode.toml",
        f"LoadCredential=marrownode.toml:{config}"))
    checked = subprocess.run([str(python), "-m", "marrownode", "check-config", "--for-service",
                              "--unit", str(unit_for_stage), str(config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert f"marrownode.toml <- {config}" in checked.stdout
    credentials = stage / "credentials"
    credentials.mkdir()
    shutil.copy(config, credentials / "marrownode.toml")
    os.chmod(credentials / "marrownode.toml", 0o400)
    os.chown(credentials / "marrownode.toml", uid, uid)
    os.chown(credentials, uid, uid)
    os.chmod(credentials, 0o500)
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
               str(python), "-m", "marrownode"]
    home = Path("/root")
    mode = home.stat().st_mode
    os.chmod(home, mode | 0o001)  # this machine's Python lives under /root: traverse only
    try:
        direct = subprocess.run([*as_user, "check-config", str(config)],
                                capture_output=True, text=True, timeout=60)
        assert direct.returncode == 2 and "Permission denied" in direct.stderr
        through = subprocess.run([*as_user, "check-config",
                                  str(credentials / "marrownode.toml")],
                                 capture_output=True, text=True, timeout=60)
        assert through.returncode == 0, through.stderr
        serve = subprocess.Popen([*as_user, "serve", "--config",
                                  str(credentials / "marrownode.toml")],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "STATE_DIRECTORY": str(state)})
        try:
            wait_for_port(port, timeout=60)
        finally:
            serve.send_signal(signal.SIGTERM)
            output = serve.communicate(timeout=60)[0]
        assert serve.returncode == 0, output[-2000:]
        assert (state / "index.sqlite3").stat().st_uid == uid
    finally:
        os.chmod(home, mode)


def test_notify_ready_after_bind_watchdog_and_stopping(serve_process, tmp_path) -> None:
    notify_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.settimeout(20)
    settings = make_settings(tmp_path / "data")
    server = serve_process(
        settings, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    ).start()
    messages: list[str] = []
    while not any("READY=1" in m for m in messages):
        messages.append(receiver.recv(4096).decode())
    # READY means the port is already bound: a connection succeeds at once.
    with socket.create_connection(("127.0.0.1", settings.node.port), timeout=1):
        pass
    watchdog = 0
    while watchdog < 2:
        if "WATCHDOG=1" in receiver.recv(4096).decode():
            watchdog += 1
    server.signal(signal.SIGTERM)
    while True:
        if "STOPPING=1" in receiver.recv(4096).decode():
            break
    assert server.wait(30) == 0
    receiver.close()


def test_watchdog_stops_when_unhealthy(serve_process, tmp_path) -> None:
    notify_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.settimeout(3)
    settings = make_settings(tmp_path / "data", storage={"min_free_mb": 1024 * 1024 * 1024})
    server = serve_process(
        settings, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    ).start(port=settings.node.port)
    wait_for_port(settings.node.port)
    received = []
    try:
        while True:
            received.append(receiver.recv(4096).decode())
    except TimeoutError:
        pass
    assert any("READY=1" in m for m in received)
    assert not any("WATCHDOG=1" in m for m in received), "disk below watermark is not healthy"
    server.stop()
    receiver.close()


def test_rows_lost_with_the_ingest_commit_come_back_from_the_spool(node_factory) -> None:
    """The ingest row is committed without waiting for the disk; a power loss may take it, but
    never the fsynced file: recovery re-indexes the file and the assembler summarises it."""
    from tests.scu import send

    node = node_factory()
    datasets = build_study(StudyOptions(study_key="lost-rows"))
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    study_uid = datasets[0].StudyInstanceUID
    wait_until(lambda: (node.index.studies.study(study_uid) or {}).get("state") == "analysed")
    lost = {row.sop_instance_uid for row in node.index.studies.instances(study_uid)[:5]}
    with node.index.db.transaction() as db:  # what a power loss could leave behind
        db.executemany("DELETE FROM instances WHERE sop_instance_uid = ?", [(u,) for u in lost])
    assert node.index.studies.instance_count() == len(datasets) - 5
    removed, reindexed = node.ingestor.recover()
    assert (removed, reindexed) == (0, 5)
    node.ingestor.summarise_pending(study_uid)  # unless the assembler got there first
    rows = {row.sop_instance_uid: row for row in node.index.studies.instances(study_uid)}
    assert len(rows) == len(datasets)
    for uid in lost:
        assert rows[uid].summarised and rows[uid].header["frames"], uid
    wait_until(lambda: (node.index.studies.study(study_uid) or {}).get("state") == "analysed")


def test_an_index_from_schema_version_1_is_migrated(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "index.sqlite3"
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY, study_uid TEXT,
                  series_uid TEXT, sop_class_uid TEXT, transfer_syntax TEXT, path TEXT,
                  size_bytes INTEGER, received_at REAL, association_id TEXT, header TEXT)""")
    db.execute("INSERT INTO instances VALUES ('1.2', '1.1', '1.1.1', '1.2.840', '1.2.840.1',"
               " '/x.dcm', 10, 0, NULL, '{\"frames\": []}')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    index = Index(path)
    (row,) = index.studies.instances("1.1")
    assert row.summarised and index.studies.unsummarised("1.1") == []


def test_concurrent_writers_of_two_index_objects_all_commit(tmp_path) -> None:
    """Four threads on each of two Index objects over one file (as the ingest connection and the
    node's own share it): every write lands, and nothing deadlocks on the two locks."""
    path = tmp_path / "index.sqlite3"
    indexes = [Index(path, synchronous="NORMAL"), Index(path)]
    errors: list[BaseException] = []

    def write(index: Index, worker: int) -> None:
        try:
            for n in range(50):
                uid = f"1.2.{worker}.{n}"
                index.studies.record_instance(
                    {"sop_instance_uid": uid, "study_uid": "1.2", "series_uid": "1.2.1",
                     "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4"},
                    tmp_path / f"{uid}.dcm", 10, "1.2.840.10008.1.2.1", None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(indexes[w % 2], w)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert indexes[0].studies.instance_count() == indexes[1].studies.instance_count() == 400


def test_a_second_serve_on_the_same_storage_is_refused_and_touches_nothing(
        serve_process, tmp_path) -> None:
    """One node per storage root: the second exits 2 at once, naming the holder, before it
    reads or repairs anything (it used to delete the running node's temp files and mark its
    open associations closed)."""
    from tests.conftest import free_port
    from tests.scu import send

    settings = make_settings(tmp_path / "data")
    first = serve_process(settings).start(port=settings.node.port)
    in_flight = settings.storage.root / "tmp" / "an-instance-being-written.part"
    in_flight.write_bytes(b"\0" * 100)  # what a C-STORE under way looks like
    second_settings = settings.model_copy(update={
        "node": settings.node.model_copy(update={"port": free_port()}),
        "http": settings.http.model_copy(update={"port": free_port()})})
    second = serve_process(second_settings)
    second.start()
    assert second.wait(30) == 2
    message = second.log.read_text()
    assert f"pid {first.process.pid}" in message and "one node per storage root" in message
    assert "event=recovered" not in message
    assert in_flight.exists()
    with socket.socket() as probe:  # the refused node never listened
        assert probe.connect_ex(("127.0.0.1", second_settings.node.port)) != 0
    datasets = build_study(StudyOptions(study_key="owner"))[:2]
    assert send(settings.node.port, datasets) == [0, 0]  # the owner serves on
    first.stop()
    third = serve_process(settings).start(port=settings.node.port)  # released at exit
    assert send(settings.node.port, datasets[:1]) == [0]
    third.stop()
