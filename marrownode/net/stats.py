"""The receiver's counters, in shared memory so that every receiving process of one node adds
to the same numbers (the metrics endpoint reads them)."""

from __future__ import annotations

import multiprocessing
from typing import Any

from marrownode.net.ul.status import Status

#: Statuses the storage handler can answer with on failure (each has its own counter).
FAILURE_STATUSES = (Status.OUT_OF_RESOURCES, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    Status.CANNOT_UNDERSTAND, Status.PROCESSING_FAILURE)
_COUNTERS = ("instances", "bytes", "accepted", "rejected")


def shared_counters() -> Any:
    """Counters in shared memory, for every receiving process of one node."""
    context = multiprocessing.get_context("spawn")
    return context.Array("q", len(_COUNTERS) + len(FAILURE_STATUSES), lock=True)


class _Counter:
    """A ReceiverStats counter, read from the shared array by its slot."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = _COUNTERS.index(name)

    def __get__(self, stats: ReceiverStats, owner: type | None = None) -> int:
        return int(stats._counters[self.slot])


class ReceiverStats:
    """Counters the metrics endpoint reads; updated from receiving threads, and from other
    receiving processes when they share the same counters (see shared_counters)."""

    instances = _Counter()
    bytes = _Counter()
    accepted = _Counter()
    rejected = _Counter()

    def __init__(self, counters: Any | None = None) -> None:
        self._counters = counters if counters is not None else shared_counters()

    def add(self, **changes: int) -> None:
        with self._counters.get_lock():
            for name, delta in changes.items():
                self._counters[_COUNTERS.index(name)] += delta

    def failed(self, status: int) -> None:
        slot = FAILURE_STATUSES.index(
            status if status in FAILURE_STATUSES else Status.PROCESSING_FAILURE)
        with self._counters.get_lock():
            self._counters[len(_COUNTERS) + slot] += 1

    @property
    def failures(self) -> dict[int, int]:
        counts = self._counters[len(_COUNTERS):]
        return {status: int(n) for status, n in zip(FAILURE_STATUSES, counts, strict=True) if n}
