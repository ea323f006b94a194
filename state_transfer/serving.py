"""Serving a message protocol on a Unix socket: one thread per connection, one answer per
request, or a stream of answers.

The in-process agent, the relay and the application's local agent all serve this way, so
they answer errors alike: a :class:`StateTransferError` says whether a retry can help; the
ordinary mistakes of a request (a missing field, a value of the wrong type) are final errors
naming themselves; a message that breaks the framing closes the connection with a warning.

Standard library and msgpack only: the local agent runs inside application containers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any

from state_transfer.errors import StateTransferError
from state_transfer.messages import Reader, send_message, widen_send_buffer

Reply = dict[str, Any]
# One reply, or several (a streamed answer): each is sent as it comes, with ``ok``.
Answer = Reply | Iterator[Reply]
Handler = Callable[[dict[str, Any]], Answer]
REQUEST_ERRORS: tuple[type[Exception], ...] = (OSError, KeyError, ValueError, TypeError)


class MessageServer:
    """Serves ``connection()``'s handler, a new one per connection, on ``socket_path``.

    The socket is created mode 0600 before it listens, so no other user can connect in between.
    ``errors()`` gives the exception types (beyond :data:`REQUEST_ERRORS`) that are a request's
    failure rather than a bug; it is called only once one is raised, so that naming a client
    library's errors does not import it early.
    """

    def __init__(self, socket_path: str, connection: Callable[[], Handler], *, name: str,
                 log: logging.Logger,
                 errors: Callable[[], tuple[type[Exception], ...]] = tuple) -> None:
        self.socket_path = socket_path
        self._connection = connection
        self._name = name
        self._log = log
        self._errors = errors
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._inode: int | None = None
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> threading.Thread:
        """Listen in a daemon thread (a stale socket file at the path is replaced)."""
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        served = self

        class Connection(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                served._serve(self.request)

        server = socketserver.ThreadingUnixStreamServer(self.socket_path, Connection,
                                                        bind_and_activate=False)
        server.daemon_threads = True
        try:
            server.server_bind()
            os.chmod(self.socket_path, 0o600)
            server.server_activate()
        except BaseException:
            server.server_close()
            raise
        self._server = server
        self._inode = os.stat(self.socket_path).st_ino
        t = threading.Thread(target=server.serve_forever, name=self._name, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        """Stop listening and end every open connection, so no client waits on a dead peer."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == self._inode:  # not a successor's
                    os.unlink(self.socket_path)
        with self._lock:
            live = list(self._live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self._live.add(sock)
        try:
            handle = self._connection()
            widen_send_buffer(sock)  # changes batches go this way
            reader = Reader(sock)
            while True:
                try:
                    msg = reader.recv()
                except OSError:
                    return
                except StateTransferError as exc:  # the framing is lost: drop the connection
                    self._log.warning("%s: dropping a control connection: %s", self._name, exc)
                    return
                if msg is None or not self._answer(sock, handle, msg):
                    return
        finally:
            with self._lock:
                self._live.discard(sock)

    def _answer(self, sock: socket.socket, handle: Handler, msg: dict[str, Any]) -> bool:
        """Answer one request; False once the connection is gone."""
        op = msg.get("op")
        try:
            answer = handle(msg)
            if isinstance(answer, dict):
                return _send(sock, {"ok": True, **answer})
            try:
                for part in answer:  # an error raised mid-stream ends the stream below
                    if not _send(sock, {"ok": True, **part}):
                        return False
            finally:
                close = getattr(answer, "close", None)
                if close is not None:
                    close()
            return True
        except StateTransferError as exc:
            self._log.warning("%s: %s failed: %s", self._name, op, exc)
            reply = {"ok": False, "error": str(exc), "retryable": exc.retryable}
        except (*REQUEST_ERRORS, *self._errors()) as exc:
            self._log.exception("%s: %s failed", self._name, op)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "retryable": False}
        return _send(sock, reply)


def _send(sock: socket.socket, msg: dict[str, Any]) -> bool:
    try:
        send_message(sock, msg)
    except OSError:
        return False
    return True
