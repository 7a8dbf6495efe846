"""An index is never silently replaced and its damage never printed as garbage: an empty
file, bytes that are not UTF-8 inside a row and a row's JSON cut short (none of which SQLite's
quick_check sees) each make `serve` exit 3 naming the file and `rebuild-index`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from marrownode.store.database import index_path
from marrownode.store.index import Index
from tests.conftest import make_settings, write_config


def _index_with_a_study(root: Path) -> Path:
    """An index as a node leaves it: one instance of one study still to be assessed."""
    path = index_path(root)
    index = Index(path)
    header = {"sop_instance_uid": "1.2.3.4.1", "study_uid": "1.2.3.4", "series_uid": "1.2.3.4.9",
              "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4", "modality": "MR"}
    spool_file = root / "spool" / "x.dcm"
    spool_file.parent.mkdir(parents=True, exist_ok=True)
    spool_file.write_bytes(b"\0" * 132)
    index.studies.record_instance(header, spool_file, 132, "1.2.840.10008.1.2.1", None)
    index.db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    index.close()
    return path


def _damage(path: Path, kind: str) -> None:
    if kind == "empty":
        path.write_bytes(b"")
        return
    index = Index(path)
    with index.db.transaction() as db:
        if kind == "text_not_utf8":
            db.execute("UPDATE studies SET reason = CAST(X'FFFE41C3' AS TEXT)")
        else:  # a header whose JSON was cut short
            db.execute("""UPDATE instances SET header = '{"sop_instance_uid": "1.2.'""")
    index.db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    index.close()


@pytest.mark.parametrize("kind", ["empty", "text_not_utf8", "json_cut_short"])
def test_damage_quick_check_misses_is_named_at_first_use(tmp_path, kind: str) -> None:
    settings = make_settings(tmp_path / "node", completion={"idle_seconds": 0.5})
    root = Path(settings.storage.root)
    path = _index_with_a_study(root)
    _damage(path, kind)
    before = path.stat().st_size
    config = write_config(tmp_path / "node.toml", settings)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "marrownode", *args, "--config",
                               str(config)], capture_output=True, text=True, timeout=90,
                              errors="backslashreplace")

    started = time.monotonic()
    served = run("serve")
    assert served.returncode == 3, served.stderr[-2000:]
    assert time.monotonic() - started < 60
    lines = [line for line in served.stderr.splitlines() if line.startswith("marrownode serve")]
    assert len(lines) == 1 and "damaged" in lines[0]
    assert str(path) in lines[0] and "marrownode rebuild-index" in lines[0]
    assert "Traceback" not in served.stderr
    assert "\\x" not in served.stderr and "\ufffd" not in served.stderr  # no raw bytes
    assert path.stat().st_size == before or kind != "empty"  # the empty file is kept as is
    if kind != "json_cut_short":  # status reads the study rows (not instance headers)
        status = run("status")
        assert status.returncode == 3 and "rebuild-index" in status.stderr
        assert "Traceback" not in status.stderr

    rebuilt = run("rebuild-index")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert list(path.parent.glob("index.sqlite3.damaged-*"))


def test_a_second_opening_in_the_same_process_keeps_sqlites_locks(tmp_path) -> None:
    """The node opens the index twice (its own and the ingest's). Checking the file must not
    open it: closing any descriptor drops every POSIX lock of the process, SQLite's too, and
    a command run beside the node then removed the WAL under it ('disk I/O error')."""
    path = index_path(tmp_path)
    node_index = Index(path)
    node_index.studies.add_event("1.2.3", "received", "first")
    Index(path, synchronous="NORMAL")  # as the ingest opens it
    wrote = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from marrownode.store.index import Index; "
         "Index(Path(sys.argv[1])).studies.add_event('1.2.3', 'action', 'cli')", str(path)],
        capture_output=True, text=True, timeout=60)
    assert wrote.returncode == 0, wrote.stderr
    assert Path(f"{path}-wal").exists()
    node_index.studies.add_event("1.2.3", "received", "after")
    assert [e["detail"] for e in node_index.studies.events("1.2.3")] == ["first", "cli",
                                                                         "after"]
