"""The Redis keys of the state channel, the SDK's own, so ``state_transfer`` needs nothing of
the orchestrator (an application can install the SDK alone).

They sit under the project's prefix (``mob:state:<move>:*``): the orchestrator's own key module
(:mod:`mobility.keys`) re-exports them, so every key the project uses is still listed in one
place, and a Redis ACL can give a move's state writers exactly ``mob:state:<move>:*``.
"""

from __future__ import annotations

PREFIX = "mob:state:"


def state_frames(move_id: str) -> str:
    """The Redis stream carrying one move's state frames."""
    return f"{PREFIX}{move_id}:frames"


def state_acked(move_id: str) -> str:
    """Bytes of the move's frames the target has applied (the source's back-pressure)."""
    return f"{PREFIX}{move_id}:acked"


def state_keys(move_id: str) -> list[str]:
    """Every key a move's state transfer may create (all expire once the move ends)."""
    return [state_frames(move_id), state_acked(move_id)]
