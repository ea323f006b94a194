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

The socket is in the pod's own directory, which the node (and, in the lab, the orchestrator on
the host) can reach; a Kubernetes deployment shares it through a volume.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from state_transfer.channel import Receiver, Sender
from state_transfer.directory import DirectoryState
from state_transfer.errors import StateTransferError
from state_transfer.frames import DELETE, END, PUT, FrameCodec, split
from state_transfer.store import StateStore

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)


def preload() -> threading.Thread:
    """Import redis-py in the background (it takes about 0.3 s), so that an application can
    answer before its first transfer session needs it."""
    import importlib

    t = threading.Thread(target=importlib.import_module, args=("redis",), daemon=True)
    t.start()
    return t

HEADER = struct.Struct("!I")
MAX_MESSAGE = 16 * 1024 * 1024


class Transferable(Protocol):
    """What the agent needs of a state: the store and the directory both provide it."""

    @property
    def version(self) -> int: ...

    @property
    def frozen(self) -> bool: ...

    def freeze(self) -> int: ...

    def resume(self) -> None: ...

    def changes_since(self, version: int) -> tuple[int, list[str], list[str]]: ...

    def encode(self, key: str) -> bytes | None: ...

    def decode_apply(self, key: str, data: bytes) -> None: ...

    def apply_delete(self, key: str) -> None: ...

    def digest(self, prefix: str = "") -> str: ...

    def count(self) -> int: ...


RAW, PACKED = b"\x01", b"\x00"


class StoreState:
    """A :class:`StateStore` seen as a Transferable.

    A value travels as one tag byte and then either the bytes themselves (``bytes`` values,
    the bulk of most states: packing 64 KiB through msgpack costs several times copying it) or
    its msgpack encoding (anything else).
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store

    @property
    def version(self) -> int:
        return self.store.version

    @property
    def frozen(self) -> bool:
        return self.store.frozen

    def freeze(self) -> int:
        return self.store.freeze()

    def resume(self) -> None:
        self.store.resume()

    def changes_since(self, version: int) -> tuple[int, list[str], list[str]]:
        return self.store.changes_since(version)

    def encode(self, key: str) -> bytes | None:
        if key not in self.store:
            return None
        value = self.store.get(key)
        if isinstance(value, bytes):
            return RAW + value
        return PACKED + bytes(msgpack.packb(value, use_bin_type=True))

    def decode_apply(self, key: str, data: bytes) -> None:
        if data[:1] == RAW:
            self.store.apply(key, bytes(data[1:]))
        elif data[:1] == PACKED:
            self.store.apply(key, msgpack.unpackb(data[1:], raw=False))
        else:
            raise StateTransferError(f"value of {key!r} has an unknown encoding tag")

    def apply_delete(self, key: str) -> None:
        self.store.apply_delete(key)

    def digest(self, prefix: str = "") -> str:
        return self.store.digest(prefix)

    def count(self) -> int:
        return len(self.store)


def _redis_error() -> type[Exception]:
    import redis

    return redis.RedisError


def send_message(sock: socket.socket, msg: dict[str, Any]) -> None:
    data = msgpack.packb(msg, use_bin_type=True)
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_message(sock: socket.socket) -> dict[str, Any] | None:
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_MESSAGE:
        raise StateTransferError(f"control message of {size} bytes is too large")
    body = _recv_exact(sock, size)
    if body is None:
        raise StateTransferError("control connection closed mid-message")
    try:
        msg = msgpack.unpackb(body, raw=False)
    except ValueError as exc:  # every msgpack decoding error (ExtraData, FormatError...) is one
        raise StateTransferError(
            f"control message is not msgpack: {type(exc).__name__}: {exc}") from exc
    if not isinstance(msg, dict):
        raise StateTransferError("control message is not a map")
    return msg


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes; None when the peer closed before sending any, an error if it closed mid-way."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise StateTransferError("control connection closed mid-message")
            return None
        buf.extend(chunk)
    return bytes(buf)


@dataclass
class Session:
    move: str
    role: str
    codec: FrameCodec
    client: redis.Redis
    sender: Sender | None = None
    receiver: Receiver | None = None

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        self.client.close()


class Agent:
    def __init__(self, state: Transferable, *, socket_path: str,
                 faults_allowed: bool = False) -> None:
        self.state = state
        self.socket_path = socket_path
        self.faults_allowed = faults_allowed
        self.sessions: dict[str, Session] = {}
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    # --- serving ---

    def start(self) -> threading.Thread:
        """Listen on the socket in a daemon thread."""
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        agent = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                agent._serve(self.request)

        self._server = socketserver.ThreadingUnixStreamServer(self.socket_path, Handler)
        self._server.daemon_threads = True
        os.chmod(self.socket_path, 0o600)
        t = threading.Thread(target=self._server.serve_forever, name="state-agent",
                             daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                msg = recv_message(sock)
            except OSError:
                return
            except StateTransferError as exc:  # the framing is lost: drop the connection
                log.warning("state agent: dropping a control connection: %s", exc)
                return
            if msg is None:
                return
            try:
                reply = {"ok": True, **self.handle(msg)}
            except StateTransferError as exc:
                log.warning("state agent: %s failed: %s", msg.get("op"), exc)
                reply = {"ok": False, "error": str(exc), "retryable": exc.retryable}
            except (OSError, KeyError, ValueError, TypeError, _redis_error()) as exc:
                log.exception("state agent: %s failed", msg.get("op"))
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "retryable": False}
            try:
                send_message(sock, reply)
            except OSError:
                return

    # --- operations ---

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "status":
            return {"version": self.state.version, "frozen": self.state.frozen,
                    "keys": self.state.count(), "sessions": sorted(self.sessions)}
        if op == "digest":
            return {"digest": self.state.digest(str(msg.get("prefix", ""))),
                    "version": self.state.version}
        if op == "freeze":
            return {"version": self.state.freeze()}
        if op == "resume":
            self.state.resume()
            return {}
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

    def _open(self, msg: dict[str, Any]) -> dict[str, Any]:
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

    def _snapshot(self, msg: dict[str, Any]) -> dict[str, Any]:
        s = self._session(msg, "source")
        assert s.sender is not None
        rnd, since = int(msg["round"]), int(msg["since"])
        if self.faults_allowed and msg.get("corrupt_seq"):
            s.sender.corrupt_seq = s.sender.seq + int(msg["corrupt_seq"])
        version, written, deleted = self.state.changes_since(since)
        state = self.state

        def frames() -> Any:
            for key in written:
                data = state.encode(key)
                if data is None:
                    continue  # deleted meanwhile: its tombstone goes in the next round
                chunks = split(data)
                for i, chunk in enumerate(chunks):
                    yield rnd, PUT, key, i, len(chunks), chunk
            for key in deleted:
                yield rnd, DELETE, key, 0, 1, b""

        count, nbytes = s.sender.send(frames())
        end = msgpack.packb({"round": rnd, "version": version, "frames": count,
                             "bytes": nbytes, "keys": len(written) + len(deleted)})
        s.sender.send([(rnd, END, "", 0, 1, bytes(end))])
        return {"version": version, "frames": count, "bytes": nbytes,
                "keys": len(written) + len(deleted)}

    def _restore(self, msg: dict[str, Any]) -> dict[str, Any]:
        s = self._session(msg, "target")
        assert s.receiver is not None
        summary = s.receiver.receive_round(int(msg["round"]), put=self.state.decode_apply,
                                           delete=self.state.apply_delete)
        return {"version": summary["version"], "frames": summary["frames"],
                "bytes": summary["bytes"], "keys": summary["keys"]}


def directory_agent(root: str, *, socket_path: str) -> Agent:
    """An agent shipping a directory (see :mod:`state_transfer.directory`)."""
    return Agent(DirectoryState(root), socket_path=socket_path)
