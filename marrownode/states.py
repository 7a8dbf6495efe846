"""The states a study, a Dixon set and a delivery move through, as the index records them.

StrEnums: a state compares equal to its stored text, so SQL rows, report.json and the status
view read the same words, and a misspelt state is a NameError instead of a silent mismatch.
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    """Where a study is in the flow of docs/architecture.md."""

    RECEIVING = "receiving"
    WAITING = "waiting"
    ANALYSING = "analysing"
    ANALYSED = "analysed"
    NO_DIXON_SET = "no_dixon_set"
    FAILED = "failed"


#: Studies that are finished: nothing more happens to them unless new data arrives.
FINISHED_STUDY_STATES = (StudyState.ANALYSED, StudyState.NO_DIXON_SET, StudyState.FAILED)


class SetState(StrEnum):
    """A Dixon set: complete or not (the assembler), then analysed or failed (the worker)."""

    WAITING = "waiting"
    READY = "ready"
    ANALYSED = "analysed"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """One result file for one destination in the outbox."""

    QUEUED = "queued"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


#: Outbox rows that still have to go out.
PENDING_DELIVERY_STATES = (DeliveryState.QUEUED, DeliveryState.SENDING)
