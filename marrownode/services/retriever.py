"""Fetching a study's images back for a measurement request that arrived after retention
removed them: C-GET from the destinations configured with retrieve = "c-get", in the
background, once per study while the node runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from marrownode.config import Settings
from marrownode.net.retrieve import retrieve_study
from marrownode.receiving import store_encoded
from marrownode.store.ingest import Ingestor
from marrownode.store.studies import StudyIndex

log = logging.getLogger(__name__)


class Retriever:
    """Starts at most one retrieval per study; the study is assessed again when it ends."""

    def __init__(self, settings: Settings, ingestor: Ingestor, studies: StudyIndex,
                 wake: Callable[[], None]) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.studies = studies
        self.wake = wake
        self.peers = [d for d in settings.destinations if d.retrieve == "c-get"]
        self._attempted: set[str] = set()
        self._lock = threading.Lock()

    def start(self, study_uid: str) -> bool:
        """Begin fetching the study's images; False when there is no peer to ask or it was
        asked already (then the request is answered with what the node has)."""
        with self._lock:
            if not self.peers or study_uid in self._attempted:
                return False
            self._attempted.add(study_uid)
        threading.Thread(target=self._retrieve, args=(study_uid,), name="retrieve",
                         daemon=True).start()
        return True

    def _retrieve(self, study_uid: str) -> None:
        stored = 0
        for peer in self.peers:
            started = time.monotonic()
            result = retrieve_study(study_uid, peer.host, peer.port, peer.ae_title,
                                    self.settings.node.ae_title,
                                    lambda encoded: store_encoded(self.ingestor, encoded))
            log.info("event=retrieved study=%s peer=%s instances=%d status=%s seconds=%.1f%s",
                     study_uid, peer.name, result.stored,
                     "none" if result.status is None else f"0x{result.status:04X}",
                     time.monotonic() - started,
                     f" error={result.error.replace(' ', '_')}" if result.error else "")
            stored += result.stored
            if result.stored:
                break
        self.studies.schedule_retry(study_uid, f"{stored} image(s) retrieved for a "
                                    "measurement request", time.time())
        self.studies.db.close()  # this thread's connections end with it
        self.ingestor.studies.db.close()
        self.wake()
