"""The in-container half of the SDK: the application's state, served on a local socket.

An application embeds a :class:`LocalAgent`. It never sees the move's key nor any Redis
credential: a relay outside the container (:mod:`state_transfer.relay`) speaks the
orchestrator's protocol, encrypts, and streams the frames through Redis; it asks the
application only for its changes, and hands it the changes it received. This module (with
:mod:`~state_transfer.store`, :mod:`~state_transfer.directory`, :mod:`~state_transfer.states`,
:mod:`~state_transfer.messages`, :mod:`~state_transfer.serving`, :mod:`~state_transfer.errors`)
needs only the standard library and msgpack.

Local protocol (documented here for applications in other languages, which may serve it
themselves): a Unix stream socket; each request and each response is a 4-byte big-endian
length followed by a msgpack map, of at most 16 MiB (:data:`MAX_MESSAGE`). A request carries
``op``; a response carries ``ok: true`` and its results, or ``ok: false``, ``error`` (text) and
``retryable`` (bool). A connection's requests are answered in order; a client may open several
connections at once (the relay does: one per operation). A state has a *version*, an integer
that grows with every change to it.

- ``status`` -> ``version``, ``frozen`` (bool), ``keys`` (how many).
- ``digest`` (``prefix``: str, optional) -> ``digest`` (str), ``version``: any stable digest of
  the state (of the keys starting with ``prefix``); it is only compared with the digest the
  other instance of the same application gives.
- ``freeze`` -> ``version``: the application stops changing its state (writers wait) and
  answers with the version it is frozen at, so the changes asked for afterwards are final.
  ``resume`` -> nothing: writes go on.
- ``changes`` (``since``: int, 0 for everything) -> a *stream* of responses to the one request::

      {ok: true, more: true, puts: [[key, data], ...], deletes: [key, ...]}   (zero or more)
      {ok: true, more: false, version: V, written: W, deleted: D}               (last)

  ``puts`` are the keys written after version ``since`` with their values, ``deletes`` the keys
  deleted after it; ``V`` is the version they bring the state to (the next round's ``since``);
  ``W`` and ``D`` count the keys found written and deleted (a key deleted between the listing
  and its encoding is counted, but sent in no put: its deletion is in a later round). A key is
  a str, ``data`` bin: the value's encoding, opaque to the relay (whatever the same
  application's ``apply`` decodes). A value longer than :data:`PIECE_BYTES` comes as
  consecutive entries ``[key, piece, total]`` (``total``: the value's length), in order, maybe
  over several messages, with no other entry between them. A message carries about
  :data:`BATCH_BYTES` of values (4 MiB; little more than :data:`BATCH_BYTES` +
  :data:`PIECE_BYTES` at most), so a state of any size streams with bounded memory on both
  sides: the client reads the stream as it comes (the socket is the queue between them). An
  error mid-way ends the stream with ``{ok: false, error, retryable}`` instead of the last
  message.
- ``apply`` (``puts``, ``deletes``: the same entries) -> ``version``: the puts, in order, then
  the deletes. A value in pieces may span several ``apply`` requests of one connection. Applied
  even while frozen: a restoring instance is not live yet.

The socket is created mode 0600 in a directory the relay can reach (a volume shared with the
node, in a container); a stale socket file at the path is replaced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from state_transfer.errors import StateTransferError
from state_transfer.messages import MAX_MESSAGE
from state_transfer.serving import Answer, MessageServer, Reply
from state_transfer.states import Transferable

__all__ = ["BATCH_BYTES", "MAX_MESSAGE", "PIECE_BYTES", "Batcher", "LocalAgent", "Pieces",
           "answer", "changed_values", "parse_put"]

log = logging.getLogger(__name__)

# A few MiB per message: large enough that the per-message cost (system calls, Python work) is
# nothing next to the bytes, small enough to stay far below MAX_MESSAGE. Measured (256 MB
# through two relays, two CPUs): 1 MiB and 8 MiB batches both moved some 5-10 % less.
BATCH_BYTES = 4 * 1024 * 1024
PIECE_BYTES = 4 * 1024 * 1024
_ENTRY_OVERHEAD = 16  # msgpack's bytes around one entry, an upper bound for small keys
STATE_OPS = ("status", "digest", "freeze", "resume")


def answer(state: Transferable, msg: dict[str, Any]) -> Reply | None:
    """The answer to a ``status``, ``digest``, ``freeze`` or ``resume`` request; None for
    another op. Both agents (local and in-process) answer these four the same way."""
    op = msg.get("op")
    if op == "status":
        return {"version": state.version, "frozen": state.frozen, "keys": state.count()}
    if op == "digest":
        return {"digest": state.digest(str(msg.get("prefix", ""))), "version": state.version}
    if op == "freeze":
        return {"version": state.freeze()}
    if op == "resume":
        state.resume()
        return {}
    return None


Values = Generator[tuple[str, bytes | None], None, None]


def changed_values(state: Transferable, since: int) -> tuple[Reply, Values]:
    """The summary of the changes after ``since`` (``version``, ``written``, ``deleted``) and
    the changes themselves, encoded as they are read: ``(key, data)`` for a written key,
    ``(key, None)`` for a deleted one."""
    version, written, deleted = state.changes_since(since)

    def values() -> Values:
        for key in written:
            data = state.encode(key)
            if data is not None:  # else deleted meanwhile: its tombstone is in a later round
                yield key, data
        for key in deleted:
            yield key, None

    return {"version": version, "written": len(written), "deleted": len(deleted)}, values()


class Batcher:
    """Packs puts and deletes into messages of about :data:`BATCH_BYTES`, cutting values
    longer than :data:`PIECE_BYTES` into pieces (without copying them)."""

    def __init__(self) -> None:
        self._puts: list[list[Any]] = []
        self._deletes: list[str] = []
        self._size = 0

    def __bool__(self) -> bool:
        return bool(self._puts or self._deletes)

    def put(self, key: str, data: bytes) -> list[Reply]:
        """Add a put; returns the messages it filled (usually none)."""
        # a message's puts are applied before its deletes: a put after a delete starts anew
        full = [self.take()] if self._deletes else []
        if len(data) <= PIECE_BYTES:
            full += self._add([key, data], len(key) + len(data))
            return full
        view = memoryview(data)
        for at in range(0, len(data), PIECE_BYTES):
            piece = view[at : at + PIECE_BYTES]
            full += self._add([key, piece, len(data)], len(key) + len(piece))
        return full

    def delete(self, key: str) -> list[Reply]:
        self._deletes.append(key)
        self._size += len(key) + _ENTRY_OVERHEAD
        return [self.take()] if self._size >= BATCH_BYTES else []

    def _add(self, entry: list[Any], size: int) -> list[Reply]:
        self._puts.append(entry)
        self._size += size + _ENTRY_OVERHEAD
        return [self.take()] if self._size >= BATCH_BYTES else []

    def take(self) -> Reply:
        """The pending entries as a message's ``puts`` and ``deletes``."""
        msg: Reply = {"puts": self._puts, "deletes": self._deletes}
        self._puts, self._deletes, self._size = [], [], 0
        return msg


def parse_put(entry: object) -> tuple[str, bytes, int]:
    """``(key, data, total)`` of a put entry (``total == len(data)`` for a whole value)."""
    if isinstance(entry, list | tuple) and len(entry) in (2, 3):
        key, data = entry[0], entry[1]
        total = entry[2] if len(entry) == 3 else len(data) if isinstance(data, bytes) else -1
        if isinstance(key, str) and isinstance(data, bytes) and isinstance(total, int) and (
                total >= len(data)):
            return key, data, total
    raise StateTransferError(f"malformed put entry {_shape(entry)}: expected [key: str, "
                             "data: bin] or [key, piece: bin, total: int >= len(piece)]")


def _shape(entry: object) -> str:
    """The types of an entry, not its content (which may be the application's data)."""
    if isinstance(entry, list | tuple):
        return "[" + ", ".join(type(e).__name__ for e in entry) + "]"
    return type(entry).__name__


@dataclass
class Pieces:
    """A value arriving in pieces: its key, its length, what arrived of it."""

    key: str
    total: int
    parts: list[bytes] = field(default_factory=list)
    got: int = 0

    def add(self, key: str, piece: bytes, total: int) -> bytes | None:
        """Add a piece; the whole value once it is complete, else None."""
        if key != self.key or total != self.total:
            raise StateTransferError(f"the value of {self.key!r} was interrupted by "
                                     f"{key!r} before its {self.total} bytes arrived")
        self.parts.append(piece)
        self.got += len(piece)
        if self.got > self.total:
            raise StateTransferError(f"the value of {key!r} has more than its {total} bytes")
        return b"".join(self.parts) if self.got == self.total else None


class _Connection:
    """One client's connection: its requests, and a value it is sending in pieces."""

    def __init__(self, state: Transferable) -> None:
        self.state = state
        self.pending: Pieces | None = None

    def handle(self, msg: dict[str, Any]) -> Answer:
        reply = answer(self.state, msg)
        if reply is not None:
            return reply
        op = msg.get("op")
        if op == "changes":
            summary, values = changed_values(self.state, int(msg["since"]))
            return self._stream(summary, values)
        if op == "apply":
            return self._apply(msg["puts"], msg.get("deletes", []))
        raise StateTransferError(f"unknown op {op!r}")

    @staticmethod
    def _stream(summary: Reply, values: Iterator[tuple[str, bytes | None]]) -> Iterator[Reply]:
        batch = Batcher()
        for key, data in values:
            for part in batch.delete(key) if data is None else batch.put(key, data):
                yield {"more": True, **part}
        if batch:
            yield {"more": True, **batch.take()}
        yield {"more": False, **summary}

    def _apply(self, puts: object, deletes: object) -> Reply:
        if not isinstance(puts, list) or not isinstance(deletes, list):
            raise StateTransferError("apply: puts and deletes must be lists")
        for entry in puts:
            key, data, total = parse_put(entry)
            if self.pending is None and len(data) == total:
                self.state.decode_apply(key, data)
                continue
            if self.pending is None:
                self.pending = Pieces(key, total)
            value = self.pending.add(key, data, total)
            if value is not None:
                self.pending = None
                self.state.decode_apply(key, value)
        for key in deletes:
            if not isinstance(key, str):
                raise StateTransferError(f"apply: a deleted key is a str, not "
                                         f"{type(key).__name__}")
            if self.pending is not None:
                raise StateTransferError(f"the value of {self.pending.key!r} was interrupted "
                                         f"by the deletion of {key!r}")
            self.state.apply_delete(key)
        return {"version": self.state.version}


class LocalAgent:
    """Serves an application's state on the local protocol (see the module's docstring).

    ``faults_allowed`` is taken for symmetry with :class:`~state_transfer.agent.Agent`, so an
    application passes its fault-injection switch the same way to either; the local protocol
    has no fault of its own today (``corrupt_seq`` corrupts a frame: the relay's business).
    """

    def __init__(self, state: Transferable, *, socket_path: str,
                 faults_allowed: bool = False) -> None:
        self.state = state
        self.socket_path = socket_path
        self.faults_allowed = faults_allowed
        self._server = MessageServer(socket_path, lambda: _Connection(state).handle,
                                     name="local state agent", log=log)

    def start(self) -> threading.Thread:
        """Listen on the socket in a daemon thread."""
        return self._server.start()

    def stop(self) -> None:
        """Stop listening and end the open connections (a relay sees them end)."""
        self._server.stop()
