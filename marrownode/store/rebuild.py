"""Rebuilding the index from the spool, for an index that is damaged beyond use.

The spool is the record of what was acknowledged: every stored instance is a file there, named
by its UIDs. What only the index knew is lost with it: study and set states, the analyses'
reports, the outbox (delivery history) and the associations. Rebuilt studies are assessed and
analysed again; their results, derived with the same UIDs, are sent again and replace what
the PACS already has.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from marrownode.store.database import index_path
from marrownode.store.index import Index
from marrownode.store.ingest import Ingestor
from marrownode.store.lock import StorageLock
from marrownode.store.spool import Spool

log = logging.getLogger(__name__)

#: The files that make up the index (SQLite's write-ahead log and shared memory with it).
_INDEX_SUFFIXES = ("", "-wal", "-shm")


@dataclass(frozen=True)
class Rebuilt:
    """Where the damaged index was kept, and what the new one holds."""

    kept_as: Path | None
    instances: int
    studies: int


def rebuild_index(root: Path, min_free_bytes: int = 0) -> Rebuilt:
    """Keep the damaged index beside it (index.sqlite3.damaged-<time>) and index every spool
    file afresh. Refuses (StorageLocked) while a node runs on the root."""
    lock = StorageLock(root)
    try:
        path = index_path(root)
        kept_as = None
        if path.exists():
            kept_as = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in _INDEX_SUFFIXES:
                part = Path(f"{path}{suffix}")
                if part.exists():
                    part.rename(f"{kept_as}{suffix}")
        index = Index(path)
        ingestor = Ingestor(Spool(root, min_free_bytes), index.studies)
        _, reindexed = ingestor.recover()
        studies = sum(index.studies.count_by_state("studies").values())
        log.info("event=index_rebuilt instances=%d studies=%d kept_as=%s", reindexed, studies,
                 kept_as.name if kept_as else "-")
        index.close()
        return Rebuilt(kept_as, reindexed, studies)
    finally:
        lock.release()
