"""The helper that runs work on the second core (results/beside.py): its answer, its failure
and its death come back to the caller; it never runs the caller's code twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from marrownode.results.beside import Beside, HelperFailed, overlapped


def test_the_child_sees_the_parents_memory_and_sends_its_answer() -> None:
    volume = np.arange(1_000_000, dtype=np.float32).reshape(100, 100, 100)
    helper = Beside(lambda: (os.getpid(), float(volume[50].sum())))
    pid, total = helper.result()
    assert pid != os.getpid()
    assert total == float(volume[50].sum())


def test_a_failure_in_the_child_is_raised_here_as_itself_with_its_traceback() -> None:
    def broken() -> None:
        raise ValueError("the SR refused an attribute")

    with pytest.raises(ValueError, match=r"^the SR refused an attribute$") as raised:
        Beside(broken).result()
    assert isinstance(raised.value.__cause__, HelperFailed)
    assert "in broken" in str(raised.value.__cause__)  # the child's traceback, for the log


def test_a_killed_child_is_a_failure_not_a_hang() -> None:
    helper = Beside(lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(HelperFailed, match="without an answer"):
        helper.result()


def test_overlapped_runs_both_and_the_later_work_beside(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    def later() -> int:
        (marks / f"later-{os.getpid()}").touch()
        return 42

    def now() -> None:
        (marks / f"now-{os.getpid()}").touch()

    assert overlapped(later, now) == 42
    pids = {name.split("-")[0]: int(name.split("-")[1]) for name in os.listdir(marks)}
    assert pids["now"] == os.getpid()
    if len(os.sched_getaffinity(0)) > 1:
        assert pids["later"] != os.getpid()


def test_when_the_work_here_fails_the_child_is_reaped() -> None:
    def now() -> None:
        raise RuntimeError("overlay failed")

    before = _children()
    with pytest.raises(RuntimeError, match="overlay failed"):
        overlapped(lambda: 1, now)
    assert _children() == before  # no child left behind, not even a zombie


def _children() -> set[int]:
    """This process's children, zombies included (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found
