"""The orchestrator's client for an application's state agent (see :mod:`agent`)."""

from __future__ import annotations

import socket
from typing import Any

from state_transfer.agent import recv_message, send_message
from state_transfer.errors import StateTransferError


class AgentClient:
    """One connection to one agent; a call is one request and its response."""

    def __init__(self, socket_path: str, *, timeout: float = 120.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                raise StateTransferError(f"state agent at {self.socket_path} is not reachable: "
                                         f"{exc}", retryable=True) from exc
            self._sock = sock
        return self._sock

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        sock = self._connect()
        try:
            send_message(sock, {"op": op, **args})
            reply = recv_message(sock)
        except OSError as exc:
            self.close()
            raise StateTransferError(f"state agent {op} failed: {exc}") from exc
        except StateTransferError:
            self.close()  # the framing is lost: the next call starts a new connection
            raise
        if reply is None:
            self.close()
            raise StateTransferError(f"state agent closed the connection during {op}")
        if not reply.get("ok"):
            raise StateTransferError(f"state agent {op}: {reply.get('error')}",
                                     retryable=bool(reply.get("retryable")))
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
