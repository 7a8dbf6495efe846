"""Result series from the analysis worker to the outbox, each as soon as it is written (the
deliverer sends it while the worker encodes the next). A series the outbox cannot take yet (a
full index) is kept and handed again every assembler round; its study's outcome is recorded
only once every series is in, so that no written result goes unsent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from marrownode.report_shape import OutputEntry
from marrownode.store.spool import disk_full

log = logging.getLogger(__name__)

#: Called with (study UID, report entries) for each result series once it is written.
SeriesCallback = Callable[[str, list[OutputEntry]], None]


class ResultHandoff:
    """Hands written result series on, keeping those the outbox refused until it takes them."""

    def __init__(self, on_series: SeriesCallback, wake: Callable[[], None]) -> None:
        self.on_series = on_series
        self.wake = wake
        self._kept: list[tuple[str, list[OutputEntry]]] = []
        self._lock = threading.Lock()

    def hand(self, study_uid: str, entries: list[OutputEntry]) -> None:
        """Queue one series for sending, or keep it (logged) while the outbox cannot."""
        try:
            self.on_series(study_uid, entries)
        except Exception as exc:
            log.warning("event=series_unqueued study=%s files=%d error=%s", study_uid,
                        len(entries), "disk_full" if disk_full(exc) else type(exc).__name__)
            with self._lock:
                self._kept.append((study_uid, entries))
            self.wake()

    def retry(self) -> None:
        """Queue the series kept before, in order; raises (and keeps the rest) while the
        outbox still cannot take them."""
        with self._lock:
            pending, self._kept = self._kept, []
        for done, (study_uid, entries) in enumerate(pending):
            try:
                self.on_series(study_uid, entries)
            except Exception:
                with self._lock:
                    self._kept[:0] = pending[done:]
                raise
            log.info("event=series_queued_late study=%s files=%d", study_uid, len(entries))

    def holds(self, study_uid: str) -> bool:
        """Whether a series of this study is still waiting for the outbox."""
        with self._lock:
            return any(uid == study_uid for uid, _ in self._kept)
