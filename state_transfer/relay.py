"""The outside half of the SDK: the orchestrator's protocol, served for an application that
speaks only the local one.

A :class:`Relay` runs next to the application's container, never inside it: it listens on the
socket the orchestrator reaches and serves exactly the protocol of
:mod:`state_transfer.agent`, so :class:`~state_transfer.control.AgentClient` and the
orchestrator do not know the difference. ``status``, ``digest``, ``freeze`` and ``resume`` go to
the application's :class:`~state_transfer.local.LocalAgent`; ``open``, ``snapshot``,
``restore`` and ``close`` are the relay's own: the move's key and its Redis credentials stay in
the relay, a snapshot pulls the application's ``changes`` and sends them as encrypted frames,
a restore receives frames and pushes ``apply`` batches to the application.

Throughput: the two processes overlap through the local socket itself. The application runs
ahead of the relay by what the socket holds (its send buffer is made a batch or two long), so
it encodes the next batch while the relay seals and sends this one; a restore pipelines its
``apply`` requests the same way. Measured on two CPUs, a reader thread with a queue between
the socket and Redis was slower than this (its hand-offs and GIL contention cost more CPU than
they overlapped). Memory stays bounded by a few batches of a few MiB on both sides of the
local socket, whatever the size of the state.

Run it as ``python -m state_transfer.relay --app APP_SOCKET --listen ORCHESTRATOR_SOCKET``:
it logs to stderr, creates the listen socket mode 0600, and ends cleanly on SIGTERM. The key and
the Redis URL arrive over the listen socket with ``open``, never on the command line or in the
environment. :class:`TransferAgent` is the logic shared with the in-process
:class:`~state_transfer.agent.Agent`, which serves a state of its own process the same way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from state_transfer.channel import Receiver, Sender
from state_transfer.errors import StateTransferError
from state_transfer.frames import CHUNK_SIZE, DELETE, END, PUT, FrameCodec, split
from state_transfer.local import STATE_OPS, Batcher, parse_put
from state_transfer.messages import Reader, recv_message, send_message, widen_send_buffer
from state_transfer.serving import MessageServer, Reply

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

APP_TIMEOUT_S = 60.0  # the longest the application may take over one message (below the
# orchestrator's own 120 s, so that a stalled application is reported as such)
APPLY_AHEAD = 2  # apply requests sent before the relay waits for the first one's reply

# A change of the state: (key, data, total) for a written key (``data`` is the whole value, or
# a piece of one ``total`` bytes long), (key, None, 0) for a deleted one.
Change = tuple[str, bytes | None, int]
FrameTuple = tuple[int, str, str, int, int, bytes]


def preload() -> threading.Thread:
    """Import redis-py in the background (it takes about 0.3 s), so that the first ``open``
    does not wait for it."""
    t = threading.Thread(target=importlib.import_module, args=("redis",), daemon=True)
    t.start()
    return t


def _redis_errors() -> tuple[type[Exception], ...]:
    import redis

    return (redis.RedisError,)


# --- where the state is: the application's socket, or (for the Agent) this process ---


class ChangeStream(Protocol):
    """A round's changes: iterate them, then read the ``summary`` (``version``, ``written``,
    ``deleted``). ``close`` releases what the stream holds, read to its end or not."""

    def __iter__(self) -> Iterator[Change]: ...

    @property
    def summary(self) -> Reply: ...

    def close(self) -> None: ...


class Applier(Protocol):
    """Applies a round's changes; ``finish`` returns once all are applied (or raises),
    ``close`` gives up what is left."""

    def put(self, key: str, data: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    def call(self, op: str, **args: Any) -> Reply:
        """``status``, ``digest``, ``freeze`` or ``resume``, answered as the local protocol
        answers them."""

    def changes(self, since: int) -> ChangeStream: ...

    def applier(self) -> Applier: ...


def _result(reply: dict[str, Any] | None, op: str) -> Reply:
    """A reply's results, or the error it carries (retryable as the application says)."""
    if reply is None:
        raise StateTransferError(f"the application closed its state connection during {op}")
    if not reply.get("ok"):
        raise StateTransferError(str(reply.get("error")), retryable=bool(reply.get("retryable")))
    return {k: v for k, v in reply.items() if k not in ("ok", "more")}


def _exchange(sock: socket.socket, msg: dict[str, Any]) -> Reply:
    op = str(msg["op"])
    try:
        send_message(sock, msg)
        reply = recv_message(sock)
    except OSError as exc:
        raise StateTransferError(f"the application's state agent failed during {op}: "
                                 f"{exc}") from exc
    return _result(reply, op)


class LocalClient:
    """The client of an application's local protocol: a connection per operation, so that
    concurrent operations (a freeze during a snapshot) never share one."""

    def __init__(self, socket_path: str, *, timeout: float = APP_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        widen_send_buffer(sock)  # apply batches go this way
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            # the application may still be starting, or restarting: try again later
            raise StateTransferError(f"the application's state socket {self.socket_path} is "
                                     f"not there (yet): {exc}", retryable=True) from exc
        return sock

    def call(self, op: str, **args: Any) -> Reply:
        sock = self.connect()
        try:
            return _exchange(sock, {"op": op, **args})
        finally:
            sock.close()


class _AppChanges:
    """The application's ``changes`` stream, read as the frames are sent.

    Read inline, not by a thread of its own: the application runs ahead of the relay by what
    the socket holds (a batch or two: see :data:`SEND_BUFFER`), so encoding there and sealing
    here already overlap; a reader thread measured slower (on two CPUs, 256 MB: 0.35 s of
    relay CPU instead of 0.27, for less throughput), its hand-offs and GIL contention
    costing more than they overlap.
    """

    def __init__(self, client: LocalClient, since: int) -> None:
        self._sock = client.connect()
        self._reader = Reader(self._sock)
        self._summary: Reply | None = None
        try:
            send_message(self._sock, {"op": "changes", "since": since})
        except OSError as exc:
            self._sock.close()
            raise StateTransferError(f"the application's state agent failed during changes: "
                                     f"{exc}") from exc

    def _next(self) -> tuple[object, object] | None:
        """The next batch's ``(puts, deletes)``; None after the last message."""
        try:
            msg = self._reader.recv()
        except OSError as exc:
            raise StateTransferError(f"the application's state agent failed during changes: "
                                     f"{exc}") from exc
        if msg is not None and msg.get("ok") and msg.get("more"):
            return msg.get("puts", []), msg.get("deletes", [])
        self._summary = _result(msg, "changes")  # the last message, or the error it carries
        return None

    def __iter__(self) -> Iterator[Change]:
        while (batch := self._next()) is not None:
            puts, deletes = batch
            if not isinstance(puts, list) or not isinstance(deletes, list):
                raise StateTransferError("changes: puts and deletes must be lists")
            for entry in puts:
                yield parse_put(entry)
            for key in deletes:
                if not isinstance(key, str):
                    raise StateTransferError(f"changes: a deleted key is a str, not "
                                             f"{type(key).__name__}")
                yield key, None, 0

    @property
    def summary(self) -> Reply:
        s = self._summary
        if s is None or not all(isinstance(s.get(k), int)
                                for k in ("version", "written", "deleted")):
            raise StateTransferError("the application's changes ended without their summary "
                                     "(version, written, deleted)")
        return s

    def close(self) -> None:
        self._sock.close()


class _AppApplier:
    """Batches a round's changes into ``apply`` requests, pipelined: up to
    :data:`APPLY_AHEAD` requests go out before their replies are read, so the application
    applies a batch while the relay receives the next from Redis (without a thread: the
    replies are a few bytes, which the socket holds until they are read)."""

    def __init__(self, client: LocalClient) -> None:
        self._sock = client.connect()
        self._reader = Reader(self._sock)
        self._batch = Batcher()
        self._unread = 0

    def _send(self, msgs: Iterable[Reply]) -> None:
        for msg in msgs:
            try:
                send_message(self._sock, {"op": "apply", **msg})
            except OSError as exc:
                raise StateTransferError(f"the application's state agent failed during "
                                         f"apply: {exc}") from exc
            self._unread += 1
            self._drain(leave=APPLY_AHEAD)

    def _drain(self, *, leave: int = 0) -> None:
        while self._unread > leave:
            try:
                reply = self._reader.recv()
            except OSError as exc:
                raise StateTransferError(f"the application's state agent failed during "
                                         f"apply: {exc}") from exc
            self._unread -= 1
            _result(reply, "apply")

    def put(self, key: str, data: bytes) -> None:
        self._send(self._batch.put(key, data))

    def delete(self, key: str) -> None:
        self._send(self._batch.delete(key))

    def finish(self) -> None:
        self._send([self._batch.take()] if self._batch else [])
        self._drain()

    def close(self) -> None:
        self._sock.close()


class AppSource:
    """The state of an application reached over its local socket."""

    def __init__(self, socket_path: str, *, timeout: float = APP_TIMEOUT_S) -> None:
        self.client = LocalClient(socket_path, timeout=timeout)

    def call(self, op: str, **args: Any) -> Reply:
        return self.client.call(op, **args)

    def changes(self, since: int) -> ChangeStream:
        return _AppChanges(self.client, since)

    def applier(self) -> Applier:
        return _AppApplier(self.client)


# --- changes to frames ---


class _Cutter:
    """Cuts a value that arrives in pieces (of any size) into frame chunks, as ``split``
    cuts a whole one, without holding more than a chunk of it."""

    def __init__(self, rnd: int, key: str, total: int) -> None:
        self.rnd, self.key, self.total = rnd, key, total
        self.count = max(1, -(-total // CHUNK_SIZE))
        self.index = self.got = 0
        self.carry = b""

    @property
    def done(self) -> bool:
        return self.got == self.total

    def add(self, piece: bytes) -> Iterator[FrameTuple]:
        self.got += len(piece)
        if self.got > self.total:
            raise StateTransferError(f"the value of {self.key!r} has more than its "
                                     f"{self.total} bytes")
        buf = self.carry + piece if self.carry else piece
        pos = 0
        # the last chunk waits for the value's last byte: it is the one that may be short
        while len(buf) - pos >= CHUNK_SIZE and self.index < self.count - 1:
            yield self._frame(buf[pos : pos + CHUNK_SIZE])
            pos += CHUNK_SIZE
        self.carry = buf[pos:]
        if self.done:
            yield self._frame(self.carry)
            self.carry = b""

    def _frame(self, chunk: bytes) -> FrameTuple:
        self.index += 1
        return self.rnd, PUT, self.key, self.index - 1, self.count, chunk


def _frames(rnd: int, changes: Iterable[Change]) -> Iterator[FrameTuple]:
    """The frames of a round's changes, in their order."""
    cutter: _Cutter | None = None
    for key, data, total in changes:
        if cutter is None and data is None:
            yield rnd, DELETE, key, 0, 1, b""
        elif cutter is None and data is not None and len(data) == total:
            chunks = split(data)
            for i, chunk in enumerate(chunks):
                yield rnd, PUT, key, i, len(chunks), chunk
        else:
            if cutter is None:
                cutter = _Cutter(rnd, key, total)
            if data is None or key != cutter.key or total != cutter.total:
                raise StateTransferError(f"the value of {cutter.key!r} was interrupted by "
                                         f"{key!r} before its {cutter.total} bytes arrived")
            yield from cutter.add(data)
            if cutter.done:
                cutter = None
    if cutter is not None:
        raise StateTransferError(f"the changes ended inside the value of {cutter.key!r}")


# --- the orchestrator's protocol ---


@dataclass
class Session:
    move: str
    role: str
    codec: FrameCodec = field(repr=False)
    client: redis.Redis = field(repr=False)
    sender: Sender | None = field(default=None, repr=False)
    receiver: Receiver | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        if self.receiver is not None:
            self.receiver.close()
        self.client.close()


class TransferAgent:
    """Serves the orchestrator's protocol (see :mod:`state_transfer.agent`) over a
    :class:`Source`: the transfer sessions are its own, the state's four ops go to the source.
    """

    name = "state relay"
    _log = log

    def __init__(self, source: Source, *, socket_path: str,
                 faults_allowed: bool = False) -> None:
        self.source = source
        self.socket_path = socket_path
        self.faults_allowed = faults_allowed
        self.sessions: dict[str, Session] = {}
        self._server = MessageServer(socket_path, lambda: self.handle, name=self.name,
                                     log=self._log, errors=_redis_errors)

    def start(self) -> threading.Thread:
        """Listen on the socket in a daemon thread."""
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()
        for s in list(self.sessions.values()):
            s.close()
        self.sessions.clear()

    def handle(self, msg: dict[str, Any]) -> Reply:
        op = msg.get("op")
        if op in STATE_OPS:
            reply = self.source.call(str(op), **(
                {"prefix": str(msg.get("prefix", ""))} if op == "digest" else {}))
            if op == "status":
                reply["sessions"] = sorted(self.sessions)
            return reply
        if op == "open":
            return self._open(msg)
        if op == "snapshot":
            return self._snapshot(msg)
        if op == "restore":
            return self._restore(msg)
        if op == "close":
            s = self.sessions.pop(str(msg["move"]), None)
            if s is not None:
                s.close()
            return {}
        raise StateTransferError(f"unknown op {op!r}")

    def _open(self, msg: dict[str, Any]) -> Reply:
        move, role = str(msg["move"]), str(msg["role"])
        if role not in ("source", "target"):
            raise StateTransferError(f"role must be source or target, not {role!r}")
        existing = self.sessions.get(move)
        if existing is not None and existing.role == role:
            return {}  # idempotent
        import redis

        client = redis.Redis.from_url(str(msg["redis_url"]), socket_timeout=30)
        codec = FrameCodec(bytes(msg["key"]), move)
        session = Session(move=move, role=role, codec=codec, client=client)
        stall = float(msg.get("stall_timeout_s", 30.0))
        if role == "source":
            session.sender = Sender(client, move, codec, stall_timeout_s=stall,
                                    max_inflight=int(msg.get("max_inflight", 64 << 20)))
        else:
            session.receiver = Receiver(client, move, codec, stall_timeout_s=stall)
        self.sessions[move] = session
        return {}

    def _session(self, msg: dict[str, Any], role: str) -> Session:
        s = self.sessions.get(str(msg["move"]))
        if s is None or s.role != role:
            raise StateTransferError(f"no {role} session for move {msg.get('move')}")
        return s

    def _snapshot(self, msg: dict[str, Any]) -> Reply:
        s = self._session(msg, "source")
        assert s.sender is not None
        rnd, since = int(msg["round"]), int(msg["since"])
        changes = self.source.changes(since)
        try:
            if self.faults_allowed and msg.get("corrupt_seq"):
                s.sender.corrupt_seq = s.sender.seq + int(msg["corrupt_seq"])
            count, nbytes = s.sender.send(_frames(rnd, changes))
            summary = changes.summary
        finally:
            changes.close()
        version = int(summary["version"])
        keys = int(summary["written"]) + int(summary["deleted"])
        end = msgpack.packb({"round": rnd, "version": version, "frames": count,
                             "bytes": nbytes, "keys": keys})
        s.sender.send([(rnd, END, "", 0, 1, bytes(end))])
        return {"version": version, "frames": count, "bytes": nbytes, "keys": keys}

    def _restore(self, msg: dict[str, Any]) -> Reply:
        s = self._session(msg, "target")
        assert s.receiver is not None
        rnd = int(msg["round"])
        applier = self.source.applier()
        try:
            summary = s.receiver.receive_round(rnd, put=applier.put, delete=applier.delete)
            applier.finish()
        finally:
            applier.close()
        return {"version": summary["version"], "frames": summary["frames"],
                "bytes": summary["bytes"], "keys": summary["keys"]}


class Relay(TransferAgent):
    """The orchestrator's protocol on ``listen_socket`` for the application whose
    :class:`~state_transfer.local.LocalAgent` listens on ``app_socket``."""

    def __init__(self, app_socket: str, listen_socket: str, *,
                 faults_allowed: bool = False) -> None:
        super().__init__(AppSource(app_socket), socket_path=listen_socket,
                         faults_allowed=faults_allowed)
        self.app_socket = app_socket
        self.listen_socket = listen_socket


# --- the process ---


class _JsonLines(logging.Formatter):
    # The SDK stands alone (it cannot use the orchestrator's mobility.logs), so this is the
    # same shape of line, kept to what a relay logs.
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage(), "pid": record.process}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
                         if sys.stderr.isatty() else _JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("MOBILITY_LOG_LEVEL", "INFO"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m state_transfer.relay",
        description="Serve the orchestrator's state protocol for an application that speaks "
                    "the local one. The move's key and Redis URL arrive over the listen "
                    "socket, never here.")
    parser.add_argument("--app", required=True, help="the application's local state socket")
    parser.add_argument("--listen", required=True,
                        help="the socket to serve the orchestrator on (created mode 0600)")
    parser.add_argument("--faults-allowed", action="store_true",
                        default=os.environ.get("MOBILITY_FAULT_INJECTION") == "1",
                        help="honour fault injection (corrupt_seq); default: "
                             "MOBILITY_FAULT_INJECTION=1")
    parser.add_argument("--exit-when-gone", metavar="PATH",
                        help="end once PATH no longer exists (a relay beside a kubelet's pod, "
                             "whose volume goes with the pod: the relay must not outlive it "
                             "and keep its network namespace alive)")
    args = parser.parse_args(argv)
    _configure_logging()
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    preload()
    relay = Relay(args.app, args.listen, faults_allowed=args.faults_allowed)
    relay.start()
    log.info("state relay: serving %s for the application at %s", args.listen, args.app)
    started = time.monotonic()
    while not stopping.wait(1.0):
        if args.exit_when_gone and not os.path.exists(args.exit_when_gone):
            log.info("state relay: %s is gone: ending", args.exit_when_gone)
            break
    relay.stop()
    log.info("state relay: stopped after %.0f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
