"""The services that run beside the receiver in `serve`; grows with the assembler and sender."""

from __future__ import annotations

from marrownode.node import Node


def attach_services(node: Node) -> None:
    """Register background services on the node (assembler, analysis, sender, http)."""
    return None
