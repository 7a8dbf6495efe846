"""The receiver's counters, in shared memory so that every receiving process of one node adds
to the same numbers (the metrics endpoint reads them), and the node's association slots:
node.max_associations holds for the node as a whole, however many processes receive."""

from __future__ import annotations

import multiprocessing
from typing import Any

from marrownode.config.schema import MAX_RECEIVING_PROCESSES
from marrownode.net.ul.status import Status

#: Statuses the storage handler can answer with on failure (each has its own counter).
FAILURE_STATUSES = (Status.OUT_OF_RESOURCES, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    Status.CANNOT_UNDERSTAND, Status.PROCESSING_FAILURE)
_COUNTERS = ("instances", "bytes", "accepted", "rejected")
_OPEN_BASE = len(_COUNTERS) + len(FAILURE_STATUSES)


def shared_counters() -> Any:
    """Counters in shared memory, for every receiving process of one node: the totals, then
    one slot per receiving process with the associations it has open."""
    context = multiprocessing.get_context("spawn")
    return context.Array("q", _OPEN_BASE + MAX_RECEIVING_PROCESSES, lock=True)


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

    def __init__(self, counters: Any | None = None, process_number: int = 0) -> None:
        """process_number: which receiving process this is (0: the node's own). Each process
        counts its open associations in its own slot, so a process that dies takes its count
        with it: its replacement starts from zero (start_counting_associations)."""
        if not 0 <= process_number < MAX_RECEIVING_PROCESSES:
            raise ValueError(f"process_number must be 0-{MAX_RECEIVING_PROCESSES - 1}")
        self._counters = counters if counters is not None else shared_counters()
        self._open_slot = _OPEN_BASE + process_number

    def start_counting_associations(self) -> None:
        """This process has no association open (yet): forget a dead predecessor's."""
        with self._counters.get_lock():
            self._counters[self._open_slot] = 0

    def open_association(self, limit: int) -> bool:
        """Take one of the node's limit association slots; False when all are taken, in
        every receiving process together."""
        with self._counters.get_lock():
            if sum(self._counters[_OPEN_BASE:]) >= limit:
                return False
            self._counters[self._open_slot] += 1
            return True

    def close_association(self) -> None:
        """Give back a slot taken by open_association."""
        with self._counters.get_lock():
            self._counters[self._open_slot] = max(0, self._counters[self._open_slot] - 1)

    @property
    def open_associations(self) -> int:
        """Associations open in the whole node."""
        return int(sum(self._counters[_OPEN_BASE:]))

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
        counts = self._counters[len(_COUNTERS):_OPEN_BASE]
        return {status: int(n) for status, n in zip(FAILURE_STATUSES, counts, strict=True) if n}
