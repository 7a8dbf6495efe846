"""Work run on another core while this one goes on: a forked child that sees the parent's
memory as it was (no pickling of volumes) and sends back a small, picklable answer.

os.fork rather than multiprocessing: the analysis worker is itself a daemonic process, which
multiprocessing forbids to have children. The child never returns into the caller's code: it
ends with os._exit, so no atexit handler, logging flush or finally block of the parent runs
twice."""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class HelperFailed(RuntimeError):
    """The child raised, or ended without an answer (killed, out of memory)."""


class Beside(Generic[T]):
    """Start `work` in a forked child now; `result()` waits for its answer."""

    def __init__(self, work: Callable[[], T]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read_end)
            _answer(work, write_end)
        os.close(write_end)
        self._pid = pid
        self._read_end = read_end
        self._done = False

    def result(self) -> T:
        """The child's return value; else the child's exception (HelperFailed when it cannot
    travel, or when the child died without an answer)."""
        if self._done:
            raise HelperFailed("the result was already taken")
        self._done = True
        with os.fdopen(self._read_end, "rb") as pipe:
            payload = pipe.read()
        _, status = os.waitpid(self._pid, 0)
        if not payload:
            raise HelperFailed(f"the helper process ended without an answer "
                               f"(wait status {status})")
        kind, value, trace = pickle.loads(payload)
        if kind == "error":
            # The child's own exception, as if raised here (a set's reason names it, not the
            # helper); its traceback rides along as the cause, for the log.
            cause = HelperFailed(f"in the helper process:\n{trace}")
            if isinstance(value, BaseException):
                raise value from cause
            raise cause
        return value  # type: ignore[no-any-return]

    def abandon(self) -> None:
        """Wait for the child without using its answer (the caller failed first)."""
        if not self._done:
            self._done = True
            os.close(self._read_end)
            os.waitpid(self._pid, 0)


def _answer(work: Callable[[], object], write_end: int) -> None:
    """Child side: run, send ('ok', value) or ('error', traceback), and leave at once."""
    code = 0
    try:
        try:
            payload = pickle.dumps(("ok", work(), ""))
        except BaseException as exc:  # everything goes back to the parent
            trace = traceback.format_exc()
            try:
                payload = pickle.dumps(("error", exc, trace))
            except Exception:  # an exception that cannot travel: its words do
                payload = pickle.dumps(("error", None, trace))
            code = 1
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
    finally:
        os._exit(code)


def overlapped(later: Callable[[], T], now: Callable[[], object]) -> T:
    """Run `later` on another core (when this process may use more than one) while `now`
    runs here; `later`'s value. On one core, `now` then `later`, in this process."""
    if len(os.sched_getaffinity(0)) < 2:
        now()
        return later()
    helper = Beside(later)
    try:
        now()
    except BaseException:
        helper.abandon()
        raise
    return helper.result()
