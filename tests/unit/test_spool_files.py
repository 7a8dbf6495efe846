"""The spool's temp files (store/spool.py).

Unnamed (O_TMPFILE) where the filesystem allows: an instance under way has no name anywhere,
is put in place by a link, and a resent instance replaces the earlier copy. Else named by
process, token and counter instead of tempfile's random names, so they must stay unique where
random names were by chance: across threads, after a fork, and over a leftover of an earlier
process that had the same pid."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from marrownode.store import spool
from marrownode.store.spool import Spool


def _spool(tmp_path: Path, unnamed: bool | None = False) -> Spool:
    store = Spool(tmp_path, unnamed_temp_files=unnamed)
    store.prepare()
    if unnamed is not False and not _kernel_makes_unnamed_files(store.temp_dir):
        pytest.skip("this filesystem has no O_TMPFILE (the spool then names its temp files)")
    return store


def _kernel_makes_unnamed_files(folder: Path) -> bool:
    """Asked of the kernel directly, not through the spool's own probe under test."""
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600))
    except OSError:
        return False
    return True


def test_where_the_filesystem_allows_an_instance_under_way_has_no_name(tmp_path: Path) -> None:
    """Linux and the filesystems a spool lives on (ext4 here) make unnamed files: nothing is
    in the temp folder while instances are written, read back or dropped, and a committed one
    has exactly one name, its place, holding exactly what was written."""
    store = _spool(tmp_path, unnamed=None)
    assert spool.unnamed_files_work(store.temp_dir) and not list(store.temp_dir.iterdir())
    kept, dropped = store.incoming(), store.incoming()
    assert store.unnamed_temp_files is True
    kept.write(memoryview(b"x" * 70_000))
    dropped.write(b"y" * 10)
    assert list(store.temp_dir.iterdir()) == []
    kept.finish()
    assert kept.path.read_bytes() == b"x" * 70_000  # the walk reads it before it is placed
    dropped.discard()
    place = store.path_for("1.2", "1.2.3", "1.2.3.4")
    store.commit(kept, place)
    assert place.read_bytes() == b"x" * 70_000 and place.stat().st_nlink == 1
    assert list(store.temp_dir.iterdir()) == []
    assert [p for p in store.data_dir.rglob("*") if p.is_file()] == [place]


def test_a_resent_instance_replaces_its_earlier_copy(tmp_path: Path) -> None:
    """A link cannot overwrite: the same instance sent again is linked beside and renamed
    over the first copy (atomically), in both kinds of temp file."""
    for unnamed in (True, False):
        store = _spool(tmp_path / str(unnamed), unnamed=unnamed)
        place = store.path_for("1.2", "1.2.3", "1.2.3.4")
        for content in (b"first copy", b"second copy"):
            incoming = store.incoming()
            incoming.write(content)
            store.commit(incoming, place)
        assert place.read_bytes() == b"second copy" and place.stat().st_nlink == 1
        assert list(store.temp_dir.iterdir()) == []


def test_a_file_that_cannot_be_placed_leaves_nothing(tmp_path: Path) -> None:
    """The place is taken by a folder (nothing a peer can arrange, but a disk can go wrong):
    the commit fails and neither a name nor a half-placed file is left."""
    store = _spool(tmp_path, unnamed=True)
    place = store.path_for("1.2", "1.2.3", "1.2.3.4")
    place.mkdir(parents=True)
    incoming = store.incoming()
    incoming.write(b"data")
    try:
        store.commit(incoming, place)
    except OSError:
        pass
    else:
        raise AssertionError("a folder in the way was overwritten")
    assert list(store.temp_dir.iterdir()) == [] and place.is_dir()
    assert list(place.iterdir()) == []


def test_temp_files_are_distinct_across_threads_and_written_whole(tmp_path: Path) -> None:
    store = _spool(tmp_path)
    made: list[spool.IncomingFile] = []
    lock = threading.Lock()

    def make() -> None:
        for _ in range(50):
            incoming = store.incoming()
            incoming.write(memoryview(b"x" * 70_000))
            with lock:
                made.append(incoming)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({f.path for f in made}) == 200
    for incoming in made:
        incoming.finish()
        assert incoming.path.stat().st_size == 70_000
        incoming.discard()
    assert list(store.temp_dir.iterdir()) == []


def test_a_leftover_with_the_next_name_is_stepped_over_not_overwritten(tmp_path: Path) -> None:
    """An earlier process with this pid (and, by bad luck, token) left a file under the name
    the counter gives next: the new file takes the one after it, the leftover is untouched."""
    store = _spool(tmp_path)
    first = store.incoming()
    number = int(first.path.name.rsplit("-", 1)[1].split(".")[0])
    leftover = store.temp_dir / f"{spool._temp_names['prefix']}{number + 1}.part"
    leftover.write_bytes(b"not ours")
    second = store.incoming()
    assert second.path != leftover and second.path.parent == store.temp_dir
    assert leftover.read_bytes() == b"not ours"
    first.discard()
    second.discard()


def test_a_forked_child_names_its_files_apart_from_its_parent(tmp_path: Path) -> None:
    store = _spool(tmp_path)
    parent_prefix = spool._temp_names["prefix"]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the prefix its files get, and leave at once
        os.write(write_end, spool._temp_names["prefix"].encode())
        os._exit(0)
    os.close(write_end)
    child_prefix = os.read(read_end, 200).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child_prefix and child_prefix != parent_prefix
    assert child_prefix.startswith(f"{pid}-")
    assert store.incoming().path.name.startswith(parent_prefix)


def test_without_unnamed_files_the_spool_names_its_temp_files(tmp_path: Path,
                                                              monkeypatch) -> None:
    """A kernel or filesystem without O_TMPFILE (or a /proc to link through): the probe says
    so instead of failing, and the spool writes, commits and resends with named temp files."""
    monkeypatch.delattr(os, "O_TMPFILE")
    store = Spool(tmp_path)
    store.prepare()
    incoming = store.incoming()
    assert store.unnamed_temp_files is False
    assert [p.name for p in store.temp_dir.iterdir()] == [incoming.path.name]
    incoming.write(b"named")
    place = store.path_for("1.2", "1.2.3", "1.2.3.4")
    store.commit(incoming, place)
    assert place.read_bytes() == b"named" and list(store.temp_dir.iterdir()) == []
