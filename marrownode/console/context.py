"""What the console's routes share: the running node's parts they read and act through, and
the /healthz document (below app.py and views.py, which both use it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marrownode.actions import Operator
from marrownode.config import Settings
from marrownode.monitor import Health
from marrownode.store.index import Index


@dataclass
class ConsoleContext:
    """What the console needs of the running node."""

    settings: Settings
    index: Index
    operator: Operator
    health: Callable[[], Health]
    node_facts: Callable[[], dict[str, Any]]  # receivers and the analysis worker


def health_body(health: Health) -> dict[str, Any]:
    """The /healthz document."""
    checks = health.checks()
    return {"healthy": health.ok, "checks": checks,
            "failed": [name for name, ok in checks.items() if not ok], **health.details}
