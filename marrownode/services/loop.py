"""What runs beside the receiver: the Service protocol and a loop in its own thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from marrownode.store.database import corruption
from marrownode.store.spool import disk_full

log = logging.getLogger(__name__)


class Service(Protocol):
    """Started after the receiver, stopped before the index closes, in reverse order."""

    def start(self) -> None:
        """Begin work (return promptly)."""

    def stop(self) -> None:
        """Finish or hand over what is in flight, then return."""


class LoopService:
    """A background thread that runs step() every poll_seconds, or at once when woken."""

    name = "service"
    join_seconds = 10.0

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        #: Told when a round meets a damaged index (the node stops and exits 3).
        self.on_damage: Callable[[Exception], None] = lambda exc: None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, now: float) -> None:
        """One round of work."""
        raise NotImplementedError

    def wait_seconds(self) -> float:
        """How long to sleep before the next round unless woken."""
        return self.poll_seconds

    def on_start(self) -> None:
        """Work done once before the loop starts."""

    def on_stop(self) -> None:
        """Work done once after the loop has ended."""

    def start(self) -> None:
        """Run on_start, then the loop in a daemon thread."""
        self.on_start()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next round now."""
        self._wake.set()

    def stop(self) -> None:
        """End the loop (waiting up to join_seconds for the round in progress), then on_stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.join_seconds)
        self.on_stop()

    def _run(self) -> None:
        failing = ""  # what the last round failed with ("" when it succeeded)
        while not self._stop.is_set():
            try:
                self.step(time.time())
            except Exception as exc:
                failing = self._failed(exc, failing)
            else:
                if failing:
                    log.info("event=%s_resumed after=%s", self.name, failing)
                    failing = ""
            self._wake.wait(self.wait_seconds())
            self._wake.clear()

    def _failed(self, exc: Exception, failing: str) -> str:
        """Log a failed round once per change of what it failed with, not once per round (a
        full disk fails every round until space returns: a pause, not a traceback storm)."""
        full = disk_full(exc)
        what = "disk_full" if full else type(exc).__name__
        if corruption(exc):
            if what != failing:
                log.error("event=%s_index_damaged error=%s", self.name, type(exc).__name__)
                self.on_damage(exc)
        elif what != failing:
            if full:
                log.warning("event=%s_paused reason=disk_full error=%s", self.name,
                            " ".join(str(exc).split())[:200].replace(" ", "_"))
            else:
                log.exception("event=%s_error", self.name)
        return what
