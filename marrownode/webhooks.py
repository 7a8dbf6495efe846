"""Failure notifications: a JSON POST to each configured webhook when an analysis fails for
good or a result cannot be delivered for good. No patient identifiers: UIDs, states and
reasons only. Sent from a background thread with a bounded number of tries, so a dead
receiver never holds the node up."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from marrownode import __version__
from marrownode.config import Webhook

log = logging.getLogger(__name__)


class Webhooks:
    """A queue of notifications and the thread that posts them."""

    tries = 3
    timeout_seconds = 10.0

    def __init__(self, hooks: list[Webhook], node_ae_title: str) -> None:
        self.hooks = hooks
        self.node = node_ae_title
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None
        #: Notifications given up on after all tries (tests, metrics).
        self.undelivered = 0
        self.delivered = 0

    def start(self) -> None:
        """Start posting (only when a webhook is configured)."""
        if self.hooks:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Post what is queued, within a few seconds, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(self.timeout_seconds)

    def notify(self, event: str, **fields: Any) -> None:
        """Queue a notification for every webhook that wants this event."""
        if not any(event in hook.events for hook in self.hooks):
            return
        try:
            self._queue.put_nowait({"event": event, "node": self.node, "at": time.time(),
                                    "version": __version__, **fields})
        except queue.Full:
            log.warning("event=webhook_queue_full dropped=%s", event)

    def _run(self) -> None:
        while (payload := self._queue.get()) is not None:
            for hook in self.hooks:
                if payload["event"] in hook.events:
                    self._post(hook, payload)

    def _post(self, hook: Webhook, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        for attempt in range(1, self.tries + 1):
            request = urllib.request.Request(
                hook.url, data=body, method="POST",
                headers={"Content-Type": "application/json",
                         "User-Agent": f"marrownode/{__version__}"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as answer:
                    if 200 <= answer.status < 300:
                        self.delivered += 1
                        return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                log.warning("event=webhook_failed url=%s attempt=%d error=%s", hook.url,
                            attempt, type(exc).__name__)
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
        self.undelivered += 1
        log.error("event=webhook_given_up url=%s notification=%s", hook.url, payload["event"])
