"""Retention: finished studies (spool, results, index rows) go after storage.retention_hours.

Nothing pending is ever removed: studies still receiving, waiting, analysing or with results
not yet delivered stay until they are done.
"""

from __future__ import annotations

import logging

from marrownode.services.loop import LoopService
from marrownode.store.spool import Spool
from marrownode.store.studies import StudyIndex

log = logging.getLogger(__name__)


class RetentionSweeper(LoopService):
    """Sweeps every interval_seconds."""

    name = "retention"

    def __init__(self, studies: StudyIndex, spool: Spool, retention_hours: float,
                 interval_seconds: float = 600.0) -> None:
        super().__init__(interval_seconds)
        self.studies = studies
        self.spool = spool
        self.retention_seconds = retention_hours * 3600

    def step(self, now: float) -> None:
        """One sweep."""
        self.sweep(now)

    def sweep(self, now: float) -> list[str]:
        """Remove expired studies; returns their UIDs."""
        removed = []
        for study_uid in self.studies.expired_studies(now, self.retention_seconds):
            instances = self.studies.forget_study(study_uid)
            self.spool.remove_study(study_uid)
            removed.append(study_uid)
            log.info("event=study_expired study=%s instances=%d", study_uid, instances)
        self.studies.forget_closed_associations(now - self.retention_seconds)
        return removed
