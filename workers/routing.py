"""Queue names. Node agents each consume their own queue, so a node's work runs on that node."""

from __future__ import annotations

ORCHESTRATION = "orchestration"


def node_queue(cluster: str, node: str) -> str:
    return f"dataplane.{cluster}.{node}"
