"""What an operator can do to a node, in one place for the command line and the web console:
retry deliveries, pause and resume a destination, analyse a study again, delete a study.
Each action is written to the event trail with who asked for it, and wakes the running
node's services when it runs inside the node (the CLI's changes are seen within a second)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from marrownode.states import StudyState
from marrownode.store.index import Index
from marrownode.store.spool import Spool

#: The trail's pseudo-study for actions on the node as a whole (destinations).
NODE = "*"


class ActionRefused(ValueError):
    """The action cannot be done as asked; the message says why, in words."""


@dataclass
class Operator:
    """The actions, bound to one node's index and spool."""

    index: Index
    spool: Spool
    destinations: list[str]
    wake_deliverer: Callable[[], None] = lambda: None
    wake_assembler: Callable[[], None] = lambda: None

    def _known_destination(self, name: str) -> None:
        if name not in self.destinations:
            raise ActionRefused(f"unknown destination {name!r}; configured: "
                                f"{', '.join(self.destinations) or '(none)'}")

    def _trail(self, study_uid: str, actor: str, detail: str) -> None:
        self.index.studies.add_event(study_uid, "action", f"{detail} (by {actor})")

    def retry(self, actor: str, destination: str | None = None,
              study_uid: str | None = None) -> int:
        """Failed results queued again now (of one destination, one study, or all), the
        destinations' backoff forgotten; how many results."""
        if destination is not None:
            self._known_destination(destination)
        count = self.index.outbox.retry(destination, study_uid)
        self._trail(study_uid or NODE, actor,
                    f"retry {destination or 'all destinations'}: {count} result(s) queued again")
        self.wake_deliverer()
        return count

    def retry_destination(self, actor: str, name: str) -> int:
        """"Retry now" on a destination: resumed if paused, its failed results queued again,
        everything it has queued due at once; how many results are now due."""
        self._known_destination(name)
        was_paused = self.index.outbox.destination(name).paused
        if was_paused:
            self.index.outbox.pause(name, False)
        requeued = self.index.outbox.retry(name)
        moved = self.index.outbox.pull_forward(name, time.time())
        self._trail(NODE, actor, f"retry now {name}: {'resumed, ' if was_paused else ''}"
                                 f"{requeued} failed result(s) queued again, "
                                 f"{moved} brought forward")
        self.wake_deliverer()
        return requeued + moved

    def retry_delivery(self, actor: str, row_id: int) -> str:
        """One result to one destination, now; returns its study."""
        study_uid = self.index.outbox.retry_row(row_id)
        if study_uid is None:
            raise ActionRefused(f"no failed or waiting delivery #{row_id}")
        self._trail(study_uid, actor, f"retry delivery #{row_id}")
        self.wake_deliverer()
        return study_uid

    def pause(self, actor: str, name: str, paused: bool) -> None:
        """Pause a destination (nothing is sent to it) or resume it (all it has queued is due)."""
        self._known_destination(name)
        self.index.outbox.pause(name, paused)
        self._trail(NODE, actor, f"{'pause' if paused else 'resume'} {name}")
        self.wake_deliverer()

    def reanalyse(self, actor: str, study_uid: str) -> None:
        """Analyse the study again (its results are sent again under the same UIDs when the
        settings and images are unchanged)."""
        if not self.index.studies.reanalyse(study_uid):
            raise ActionRefused(f"no study {study_uid} in the index")
        self._trail(study_uid, actor, "reanalyse")
        self.wake_assembler()

    def downloaded(self, actor: str, study_uid: str, what: str) -> None:
        """A user took a copy of the study's data out of the node: the trail says who."""
        self.index.studies.add_event(study_uid, "download", f"{what} (by {actor})")

    def delete(self, actor: str, study_uid: str) -> int:
        """Remove the study's received images, results, deliveries and trail; how many
        instances it had. Refused while it is being analysed."""
        study = self.index.studies.study(study_uid)
        if study is None:
            raise ActionRefused(f"no study {study_uid} in the index")
        if study["state"] == StudyState.ANALYSING:
            raise ActionRefused(f"{study_uid} is being analysed; delete it when the analysis "
                                "has ended")
        count = self.index.studies.forget_study(study_uid)
        self.spool.remove_study(study_uid)
        self._trail(NODE, actor, f"delete {study_uid}: {count} instance(s)")
        return count
