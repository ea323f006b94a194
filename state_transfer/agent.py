"""The agent an application serves to the orchestrator.

Protocol (documented here because applications in other languages may implement it): a Unix
stream socket; each request and response is a 4-byte big-endian length followed by a msgpack
map. Requests carry ``op``; responses carry ``ok`` and either results or ``error``.

- ``open`` (``move``, ``key`` of 32 bytes, ``role`` source/target, ``redis_url``): starts a
  transfer session; the key stays in this process, never in Redis. Idempotent.
- ``snapshot`` (``move``, ``round``, ``since``): streams the keys changed after version
  ``since`` as frames, then an END frame; returns ``version``, ``frames``, ``bytes``, ``keys``.
- ``restore`` (``move``, ``round``): applies the round's frames; returns the same counts.
- ``freeze``: stops the application's writes; returns ``version``. ``resume``: lets them go on.
- ``close`` (``move``): ends the session. ``status``: ``version``, ``frozen``, ``keys``.
  ``digest`` (``prefix``, optional): a digest of the state (of the keys with that prefix).

Two ways to serve it. An :class:`Agent` in the application's own process holds the key and
talks to Redis itself (in-process use: benchmarks, tests, applications that may hold the
key). An application in a container, which must hold neither the key nor Redis credentials,
embeds a :class:`~state_transfer.local.LocalAgent` instead, and a
:class:`~state_transfer.relay.Relay` outside the container serves this protocol for it. Both
are the same transfer logic (:class:`~state_transfer.relay.TransferAgent`) over a different
source of state.

The socket is in the pod's own directory, which the node (and, in the lab, the orchestrator on
the host) can reach; a Kubernetes deployment shares it through a volume.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from state_transfer.directory import DirectoryState
from state_transfer.errors import StateTransferError
from state_transfer.local import answer, changed_values
from state_transfer.messages import HEADER, MAX_MESSAGE, recv_message, send_message
from state_transfer.relay import Applier, Change, ChangeStream, Session, TransferAgent, preload
from state_transfer.serving import Reply
from state_transfer.states import PACKED, RAW, StoreState, Transferable

# The framing, the Transferable protocol and StoreState moved to modules an application's
# container can import without cryptography or redis; they stay importable from here.
__all__ = ["HEADER", "MAX_MESSAGE", "PACKED", "RAW", "Agent", "InProcessSource", "Session",
           "StoreState", "Transferable", "directory_agent", "preload", "recv_message",
           "send_message"]

log = logging.getLogger(__name__)


class _StateChanges:
    def __init__(self, state: Transferable, since: int) -> None:
        self.summary, self._values = changed_values(state, since)

    def __iter__(self) -> Iterator[Change]:
        for key, data in self._values:
            yield key, data, 0 if data is None else len(data)

    def close(self) -> None:
        self._values.close()


class _StateApplier:
    def __init__(self, state: Transferable) -> None:
        self.state = state

    def put(self, key: str, data: bytes) -> None:
        self.state.decode_apply(key, data)

    def delete(self, key: str) -> None:
        self.state.apply_delete(key)

    def finish(self) -> None:
        pass  # applied as they came

    def close(self) -> None:
        pass


class InProcessSource:
    """A state of this process, as a relay's source."""

    def __init__(self, state: Transferable) -> None:
        self.state = state

    def call(self, op: str, **args: Any) -> Reply:
        reply = answer(self.state, {"op": op, **args})
        if reply is None:
            raise StateTransferError(f"unknown op {op!r}")
        return reply

    def changes(self, since: int) -> ChangeStream:
        return _StateChanges(self.state, since)

    def applier(self) -> Applier:
        return _StateApplier(self.state)


class Agent(TransferAgent):
    """The orchestrator's protocol served from inside the application's process."""

    name = "state agent"
    _log = log

    def __init__(self, state: Transferable, *, socket_path: str,
                 faults_allowed: bool = False) -> None:
        self.state = state
        super().__init__(InProcessSource(state), socket_path=socket_path,
                         faults_allowed=faults_allowed)


def directory_agent(root: str, *, socket_path: str) -> Agent:
    """An agent shipping a directory (see :mod:`state_transfer.directory`)."""
    return Agent(DirectoryState(root), socket_path=socket_path)
