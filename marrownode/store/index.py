"""The index: one SQLite database that records every state change of the node, with one
object per job (studies.StudyIndex, outbox.Outbox, the status view) over one Database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marrownode.store.database import Database
from marrownode.store.outbox import Outbox
from marrownode.store.status import status_summary, status_view
from marrownode.store.studies import StudyIndex


class Index:
    """The node's index file and the jobs done on it."""

    def __init__(self, path: Path, synchronous: str = "FULL", read_only: bool = False) -> None:
        self.db = Database(path, synchronous, read_only)
        self.studies = StudyIndex(self.db)
        self.outbox = Outbox(self.db)

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self.db.path

    def writable(self) -> bool:
        """Whether a write can be committed now (health)."""
        return self.db.writable()

    def close(self) -> None:
        """Close the calling thread's connection."""
        self.db.close()

    def status(self, limit: int | None = None, offset: int = 0) -> dict[str, Any]:
        """Everything `marrownode status` shows (limit and offset page the studies)."""
        return status_view(self.db, self.outbox, limit, offset)

    def status_summary(self) -> dict[str, Any]:
        """Counts only, no study named (/status without a login)."""
        return status_summary(self.db, self.outbox)
