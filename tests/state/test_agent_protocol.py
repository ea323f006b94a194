"""The state agent's control protocol against bad requests: a real agent on a Unix socket.

Aspects: an unknown op (a misspelt or mis-cased one, a missing, numeric or bytes op) is
answered with an error naming it, not retryable, and changes nothing: the state is not frozen
and the next request on the same connection is served; a request missing a field its op needs
is answered with an error naming the field; a message announcing more than ``MAX_MESSAGE``
bytes is refused at its header (the connection is closed without the agent waiting for the
body), while one of exactly ``MAX_MESSAGE`` bytes is served; a message that is not msgpack,
not a map, carries extra bytes, or ends before its announced length (in the body or in the
header) closes the connection with a warning naming the problem; after every one of them the
agent still serves new connections. Waits are bounded by a deadline, never used as a clock.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from state_transfer.agent import HEADER, MAX_MESSAGE, Agent, StoreState, recv_message, send_message
from state_transfer.control import AgentClient
from state_transfer.errors import StateTransferError
from state_transfer.store import StateStore

WAIT_S = 30.0  # an upper bound for an answer, never a measured time
LOGGER = "state_transfer.agent"


@pytest.fixture
def store() -> StateStore:
    s = StateStore()
    s.set("k", "v")
    return s


@pytest.fixture
def agent(tmp_path: Path, store: StateStore) -> Iterator[Agent]:
    a = Agent(StoreState(store), socket_path=str(tmp_path / "agent.sock"))
    a.start()
    try:
        yield a
    finally:
        a.stop()


def connect(agent: Agent) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.connect(agent.socket_path)
    return sock


def ask(sock: socket.socket, msg: dict[str, Any]) -> dict[str, Any]:
    send_message(sock, msg)
    reply = recv_message(sock)
    assert reply is not None, f"the agent closed the connection instead of answering {msg}"
    return reply


def assert_closed(sock: socket.socket) -> None:
    """The agent closed the connection: end of stream, and no answer before it."""
    assert sock.recv(1) == b"", "the agent answered instead of closing the connection"


def assert_still_serving(agent: Agent, store: StateStore) -> None:
    with AgentClient(agent.socket_path, timeout=WAIT_S) as client:
        status = client.call("status")
    assert status["version"] == store.version and status["keys"] == len(store)
    assert status["frozen"] is False


@pytest.mark.parametrize("op", ["teleport", "FREEZE", "freeze ", b"freeze", 5, None])
def test_an_unknown_op_is_an_error_and_changes_nothing(agent: Agent, store: StateStore,
                                                      op: object) -> None:
    version = store.version
    with connect(agent) as sock:
        msg: dict[str, Any] = {"move": "m"} if op is None else {"op": op, "move": "m"}
        reply = ask(sock, msg)
        assert reply["ok"] is False
        assert reply["error"] == f"unknown op {op!r}"
        assert reply["retryable"] is False
        assert not store.frozen and store.version == version
        # the same connection goes on
        again = ask(sock, {"op": "status"})
        assert again["ok"] is True and again["version"] == version
    assert_still_serving(agent, store)


def test_the_client_sees_an_unknown_op_as_a_final_error(agent: Agent, store: StateStore) -> None:
    with AgentClient(agent.socket_path, timeout=WAIT_S) as client:
        with pytest.raises(StateTransferError, match="unknown op 'teleport'") as err:
            client.call("teleport")
        assert err.value.retryable is False
        assert client.call("digest")["digest"] == store.digest()


def test_a_missing_field_is_an_error_naming_it(agent: Agent, store: StateStore) -> None:
    with connect(agent) as sock:
        reply = ask(sock, {"op": "close"})
        assert reply["ok"] is False and reply["retryable"] is False
        assert reply["error"] == "KeyError: 'move'"
        assert ask(sock, {"op": "status"})["ok"] is True
    assert_still_serving(agent, store)


def padded(op: str, size: int) -> dict[str, Any]:
    """A request for ``op`` whose msgpack encoding is exactly ``size`` bytes."""
    n = size
    for _ in range(3):
        n += size - len(msgpack.packb({"op": op, "pad": b"x" * n}, use_bin_type=True))
    msg = {"op": op, "pad": b"x" * n}
    assert len(msgpack.packb(msg, use_bin_type=True)) == size
    return msg


def test_a_message_of_exactly_the_limit_is_served(agent: Agent, store: StateStore) -> None:
    with connect(agent) as sock:
        reply = ask(sock, padded("status", MAX_MESSAGE))
        assert reply["ok"] is True and reply["version"] == store.version


@pytest.mark.parametrize("size", [MAX_MESSAGE + 1, 2**32 - 1])
def test_a_message_over_the_limit_is_refused_at_its_header(
        agent: Agent, store: StateStore, size: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with connect(agent) as sock:
        # only the header: an agent that went on to read the body would never close
        sock.sendall(HEADER.pack(size))
        assert_closed(sock)
    assert f"control message of {size} bytes is too large" in caplog.text
    assert_still_serving(agent, store)


BODY = msgpack.packb({"op": "status"}, use_bin_type=True)
MALFORMED = {
    "not-msgpack": (HEADER.pack(1) + b"\xc1", "not msgpack"),
    "not-a-map": (HEADER.pack(3) + msgpack.packb([1, 2]), "not a map"),
    "extra-bytes": (HEADER.pack(len(BODY) + 1) + BODY + b"\x01", "not msgpack"),
    "short-body": (HEADER.pack(len(BODY) + 10) + BODY, "closed mid-message"),
    "short-header": (HEADER.pack(len(BODY))[:2], "closed mid-message"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_message_closes_the_connection(
        agent: Agent, store: StateStore, name: str, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    data, problem = MALFORMED[name]
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with connect(agent) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # nothing more comes: a short message stays short
        assert_closed(sock)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and problem in warnings[0], warnings
    # a client's mistake is a warning, not a crash of the connection's thread
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info]
    assert_still_serving(agent, store)
