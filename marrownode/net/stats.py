"""The receiver's counters, in shared memory so that every receiving process of one node adds
to the same numbers (the metrics endpoint reads them), the node's association slots
(node.max_associations holds for the node as a whole, however many processes receive), and
the connections each process holds, by which they share new ones out evenly."""

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
_CONNECTIONS_BASE = _OPEN_BASE + MAX_RECEIVING_PROCESSES
#: How long a receiving process lets each less busy one take a new connection first: a few
#: of Python's 5 ms thread switch intervals, for a busy process's listener to get its turn;
#: short beside an association.
ACCEPT_DEFER_SECONDS = 0.02


def shared_counters() -> Any:
    """Counters in shared memory, for every receiving process of one node: the totals, then
    one slot per receiving process with the associations it has open, then one with the
    connections it holds."""
    context = multiprocessing.get_context("spawn")
    return context.Array("q", _CONNECTIONS_BASE + MAX_RECEIVING_PROCESSES, lock=True)


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

    def __init__(self, counters: Any | None = None, process_number: int = 0,
                 processes: int = 1) -> None:
        """process_number: which receiving process this is (0: the node's own), of processes
        that accept from one listening socket. Each process counts its open associations and
        its connections in its own slots, so a process that dies takes its counts with it:
        its replacement starts from zero (start_counting_associations)."""
        if not 0 <= process_number < MAX_RECEIVING_PROCESSES:
            raise ValueError(f"process_number must be 0-{MAX_RECEIVING_PROCESSES - 1}")
        if not process_number < processes <= MAX_RECEIVING_PROCESSES:
            raise ValueError(f"processes must be {process_number + 1}-{MAX_RECEIVING_PROCESSES}")
        self._counters = counters if counters is not None else shared_counters()
        self._number = process_number
        #: Receiving processes accepting from the node's one listening socket.
        self.processes = processes
        self._open_slot = _OPEN_BASE + process_number
        self._connections_slot = _CONNECTIONS_BASE + process_number

    def start_counting_associations(self) -> None:
        """This process has no association or connection (yet): forget a dead predecessor's."""
        with self._counters.get_lock():
            self._counters[self._open_slot] = 0
            self._counters[self._connections_slot] = 0

    def connections(self) -> list[int]:
        """The connections each receiving process holds, by process number."""
        return [int(n) for n in
                self._counters[_CONNECTIONS_BASE:_CONNECTIONS_BASE + self.processes]]

    def accept_delay(self) -> float:
        """How long this process waits before it takes a new connection from the shared
        listening socket: none when it holds the fewest, else ACCEPT_DEFER_SECONDS for each
        process ahead of it, so the least busy takes it (on ties an extra process before the
        node's own, which also runs the node's services). A process that does not take it
        in time leaves it to the next: a connection waits at most a few such delays."""
        if self.processes == 1:
            return 0.0

        def rank(number: int, held: int) -> tuple[int, bool, int]:
            return held, number == 0, number

        held = self.connections()
        mine = rank(self._number, held[self._number])
        ahead = sum(rank(number, count) < mine for number, count in enumerate(held))
        return ahead * ACCEPT_DEFER_SECONDS

    def connection_accepted(self) -> None:
        """This process took a connection (counted before it looks for the next one)."""
        with self._counters.get_lock():
            self._counters[self._connections_slot] += 1

    def connection_closed(self) -> None:
        """A connection of this process is gone."""
        with self._counters.get_lock():
            self._counters[self._connections_slot] = max(
                0, self._counters[self._connections_slot] - 1)

    def open_association(self, limit: int) -> bool:
        """Take one of the node's limit association slots; False when all are taken, in
        every receiving process together."""
        with self._counters.get_lock():
            if sum(self._counters[_OPEN_BASE:_CONNECTIONS_BASE]) >= limit:
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
        return int(sum(self._counters[_OPEN_BASE:_CONNECTIONS_BASE]))

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
