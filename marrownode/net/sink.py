"""What the receiver hands its work to: the node wires an InstanceSink to ingest and the
index, so the receiver itself imports nothing from store/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoreAnswer:
    """What the sink answers for one instance: the DIMSE status and an error comment."""

    status: int
    comment: str = ""


class InstanceWriter(Protocol):
    """An instance being received, written as it arrives (memory stays one PDU per
    association, whatever the object's size)."""

    size: int

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes."""

    def discard(self) -> None:
        """Drop what was written (refused, or the association ended halfway)."""


class InstanceSink(Protocol):
    """Where the receiver hands its work: the node wires it to ingest and the index."""

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> bool:
        """An association is about to be accepted: record it; False refuses it (transient:
        the node cannot record anything now, e.g. its disk is full)."""

    def open_instance(self, association_id: str) -> InstanceWriter | StoreAnswer:
        """Somewhere to write an arriving instance (its Part 10 bytes, piece by piece), or
        the answer to give at once (no room)."""

    def store(self, written: InstanceWriter, association_id: str) -> StoreAnswer:
        """Store the instance just written; answer only once it is durable."""

    def association_closed(self, association_id: str) -> None:
        """An accepted association ended (released, aborted or lost)."""
