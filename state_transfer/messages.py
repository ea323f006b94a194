"""Messages on a state socket: a 4-byte big-endian length, then a msgpack map.

Both protocols use it: the orchestrator's (:mod:`state_transfer.agent`, served by an in-process
agent or by a relay) and the application's local one (:mod:`state_transfer.local`). It needs
nothing but the standard library and msgpack, because it runs inside application containers.

A state batch is megabytes of values, and this is on the path whose throughput a move's
duration depends on, so neither side copies them more than the kernel does: a long bin is
written straight from the value (the message is msgpack all the same, sent as a gather list:
``msgpack.packb`` of a 4 MiB batch costs more than the socket, its buffer growing by
``realloc``), and a connection receives into one buffer it reuses from message to message.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

import msgpack

from state_transfer.errors import StateTransferError

HEADER = struct.Struct("!I")
MAX_MESSAGE = 16 * 1024 * 1024
# A bin at least this long is sent from where it is; shorter ones are packed with the rest.
_BIG = 8 * 1024
# Below this a message goes out as one joined buffer (one system call, nothing to gather).
_JOIN_BELOW = 64 * 1024
_IOV_MAX = 1024  # Linux's limit on buffers per sendmsg

Buffer = bytes | bytearray | memoryview
# A batch's worth: with the default (about 200 KiB) a 4 MiB message crosses a local socket in
# some twenty sender/receiver wake-ups; measured, a 256 MB ``changes`` stream took 15 % less
# time with this. The kernel caps it at net.core.wmem_max, which is fine: it is only a hint.
SEND_BUFFER = 4 * 1024 * 1024


def widen_send_buffer(sock: socket.socket) -> None:
    """Let the kernel queue a whole batch on ``sock`` (see :data:`SEND_BUFFER`)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def _head(n: int, fix: int, fix_max: int, b16: int, b32: int) -> bytes:
    if n <= fix_max:
        return bytes([fix | n])
    if n <= 0xFFFF:
        return struct.pack("!BH", b16, n)
    return struct.pack("!BI", b32, n)


def encode(msg: dict[str, Any]) -> list[Buffer]:
    """``msg`` in msgpack (as ``packb(msg, use_bin_type=True)`` gives it), as buffers to
    gather: long bins are the values themselves, not copies of them."""
    parts: list[Buffer] = []
    parts.append(_encode(msg, parts, bytearray()))
    return parts


def _encode(obj: Any, parts: list[Buffer], cur: bytearray) -> bytearray:
    """Append ``obj`` to ``cur``, the buffer being filled; a long bin ends it (it goes to
    ``parts`` with the bin after it) and a new one is returned.

    A plain function, not a closure: a recursive closure is a reference cycle, which would
    keep every message's values alive until the garbage collector happens to run.
    """
    if isinstance(obj, bytes | bytearray | memoryview) and (
            n := obj.nbytes if isinstance(obj, memoryview) else len(obj)) >= _BIG:
        cur += struct.pack("!BH", 0xC5, n) if n <= 0xFFFF else struct.pack("!BI", 0xC6, n)
        parts.append(cur)
        parts.append(obj)
        return bytearray()
    if isinstance(obj, dict):
        cur += _head(len(obj), 0x80, 15, 0xDE, 0xDF)
        for k, v in obj.items():
            cur = _encode(v, parts, _encode(k, parts, cur))
    elif isinstance(obj, list | tuple):
        cur += _head(len(obj), 0x90, 15, 0xDC, 0xDD)
        for v in obj:
            cur = _encode(v, parts, cur)
    else:
        cur += msgpack.packb(obj, use_bin_type=True)
    return cur


def send_message(sock: socket.socket, msg: dict[str, Any]) -> None:
    parts = encode(msg)
    size = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
    if size > MAX_MESSAGE:
        # refused here, with a message, rather than by the peer dropping the connection
        raise StateTransferError(f"a message of {size} bytes is over the limit of "
                                 f"{MAX_MESSAGE}")
    head = HEADER.pack(size)
    if size < _JOIN_BELOW:
        sock.sendall(b"".join([head, *parts]))
        return
    views = [memoryview(p) for p in (head, *parts) if len(p)]
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i : i + _IOV_MAX])
        while sent:
            if sent >= views[i].nbytes:
                sent -= views[i].nbytes
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0


class Reader:
    """Receives one connection's messages into one buffer, reused from message to message
    (decoding copies every value out of it)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray(HEADER.size)

    def recv(self) -> dict[str, Any] | None:
        """The next message; None when the peer closed the connection between two messages."""
        if not self._fill(HEADER.size, at_start=True):
            return None
        (size,) = HEADER.unpack_from(self._buf)
        if size > MAX_MESSAGE:
            raise StateTransferError(f"control message of {size} bytes is too large")
        if len(self._buf) < size:
            self._buf = bytearray(size)  # not grown in place: there is nothing to keep
        if not self._fill(size, at_start=False):
            raise StateTransferError("control connection closed mid-message")
        try:
            with memoryview(self._buf) as view:
                msg = msgpack.unpackb(view[:size], raw=False)
        except ValueError as exc:  # every msgpack decoding error (ExtraData, FormatError...)
            raise StateTransferError(
                f"control message is not msgpack: {type(exc).__name__}: {exc}") from exc
        if not isinstance(msg, dict):
            raise StateTransferError("control message is not a map")
        return msg

    def _fill(self, n: int, *, at_start: bool) -> bool:
        """The first ``n`` bytes of the buffer received; False when the peer closed before
        sending any, an error if it closed mid-way."""
        got = 0
        with memoryview(self._buf) as view:
            while got < n:
                k = self.sock.recv_into(view[got:n])
                if not k:
                    if got or not at_start:
                        raise StateTransferError("control connection closed mid-message")
                    return False
                got += k
        return True


def recv_message(sock: socket.socket) -> dict[str, Any] | None:
    """The next message (with a buffer of its own); None when the peer closed the connection
    between two messages."""
    return Reader(sock).recv()
