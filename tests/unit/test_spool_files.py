"""The spool's temp files (store/spool.py): named by process, token and counter instead of
tempfile's random names, so they must stay unique where random names were by chance: across
threads, after a fork, and over a leftover of an earlier process that had the same pid."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from marrownode.store import spool
from marrownode.store.spool import Spool


def _spool(tmp_path: Path) -> Spool:
    store = Spool(tmp_path)
    store.prepare()
    return store


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
