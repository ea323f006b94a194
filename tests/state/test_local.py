"""The in-container half of the SDK: a real LocalAgent on a Unix socket, spoken to in raw
messages as an application in another language would be.

Aspects: the framing sends exactly what ``msgpack.packb`` packs (long bins gathered from
where they are, every header size around its limits) and reads it back; ``status``,
``digest``, ``freeze`` and ``resume`` answer as the in-process agent does (a frozen store
holds its writers until ``resume``); an unknown op or a malformed request is a final error
and the connection goes on; ``changes`` streams a state larger than ``MAX_MESSAGE`` (40 MB,
with one value over the limit by itself) in several messages, none over ``BATCH_BYTES +
PIECE_BYTES`` and a little, a long value in consecutive ``[key, piece, total]`` entries, then
a last message with ``version``, ``written`` and ``deleted``; a 64 MB stream holds a few
batches in memory, not the state (both ends traced); ``changes`` since a version carries only
what changed after it, deletions included; ``apply`` takes whole values, a value in pieces
spread over two requests, and deletes, after which the digests are equal; an interrupted
value is refused; the socket is mode 0600 and ``stop`` ends open connections; importing the
in-container modules (and the reference sessions workload, and the counter example) needs
neither cryptography, redis nor hiredis, and loads no third-party module beyond what msgpack
loads.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from state_transfer.local import BATCH_BYTES, PIECE_BYTES, LocalAgent
from state_transfer.messages import HEADER, MAX_MESSAGE, Reader, encode, send_message
from state_transfer.relay import AppSource
from state_transfer.states import StoreState
from state_transfer.store import StateStore
from tests.conftest import REPO
from tests.state.test_agent_protocol import ask

WAIT_S = 30.0  # an upper bound for an answer, never a measured time


def serve(store: StateStore, path: Path) -> LocalAgent:
    agent = LocalAgent(StoreState(store), socket_path=str(path))
    agent.start()
    return agent


@pytest.fixture
def store() -> StateStore:
    s = StateStore()
    s.set("a", 1)
    s.set("b", {"x": [1, 2]})
    s.set("c", b"raw")
    return s


@pytest.fixture
def agent(store: StateStore, sockdir: Path) -> Iterator[LocalAgent]:
    a = serve(store, sockdir / "app.sock")
    try:
        yield a
    finally:
        a.stop()


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.connect(path)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "the agent closed the connection mid-stream"
        buf += chunk
    return bytes(buf)


def stream(sock: socket.socket, since: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The messages of one ``changes`` answer, and each one's size on the wire."""
    send_message(sock, {"op": "changes", "since": since})
    msgs, sizes = [], []
    while True:
        (size,) = HEADER.unpack(recv_exact(sock, HEADER.size))
        body = recv_exact(sock, size)
        msg = msgpack.unpackb(body, raw=False)
        msgs.append(msg)
        sizes.append(size)
        assert msg["ok"] is True, msg
        if not msg["more"]:
            return msgs, sizes


def values_of(msgs: list[dict[str, Any]]) -> tuple[dict[str, bytes], list[str]]:
    """The values a stream carries (pieces joined, checked consecutive) and its deletes."""
    values: dict[str, bytes] = {}
    deletes: list[str] = []
    pending: tuple[str, int, bytearray] | None = None
    for msg in msgs[:-1]:
        for entry in msg["puts"]:
            if len(entry) == 2:
                assert pending is None
                values[entry[0]] = entry[1]
                continue
            key, piece, total = entry
            assert len(piece) <= PIECE_BYTES
            if pending is None:
                pending = (key, total, bytearray())
            assert (pending[0], pending[1]) == (key, total), "pieces of a value interleaved"
            pending[2].extend(piece)
            if len(pending[2]) == total:
                values[key] = bytes(pending[2])
                pending = None
        deletes += msg["deletes"]
    assert pending is None
    return values, deletes


def write_then_set(store: StateStore, key: str, done: threading.Event) -> None:
    """Write ``key`` (waiting while the store is frozen), then tell."""
    store.set(key, 1)
    done.set()


BIG = os.urandom(100_000)


@pytest.mark.parametrize("msg", [
    {"op": "status"},
    {"ok": True, "version": 2**40, "frozen": False, "n": -3, "f": 1.5, "none": None},
    {"puts": [["k", BIG[:8 * 1024 - 1]], ["l", BIG[:8 * 1024]], ["m", BIG[:65535]],
              ["n", BIG[:65536], 70_000], ["o", memoryview(BIG)[10:90_000], len(BIG)]],
     "deletes": ["x" * 300]},
    {f"k{i}": list(range(i)) for i in range(17)},  # fix, 16- and 32-bit headers around 15
    {"a": [BIG] * 3, "t": (1, (2, BIG)), "m": {str(i): i for i in range(70_000)}},
])
def test_the_framing_is_packb_s_msgpack(msg: dict[str, Any]) -> None:
    """What goes out in pieces is byte for byte what msgpack packs (the peer may be any
    msgpack library), and reads back the same."""
    want = msgpack.packb(msg, use_bin_type=True)
    assert b"".join(encode(msg)) == want
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(WAIT_S)
        b.settimeout(WAIT_S)
        sending = threading.Thread(target=send_message, args=(a, msg))
        sending.start()
        got = Reader(b).recv()
        sending.join(WAIT_S)
    assert got == msgpack.unpackb(want, raw=False)


def test_the_four_state_ops(agent: LocalAgent, store: StateStore) -> None:
    with connect(agent.socket_path) as sock:
        assert ask(sock, {"op": "status"}) == {"ok": True, "version": store.version,
                                               "frozen": False, "keys": 3}
        assert ask(sock, {"op": "digest"})["digest"] == store.digest()
        assert ask(sock, {"op": "digest", "prefix": "a"})["digest"] == store.digest("a")
        frozen = ask(sock, {"op": "freeze"})
        assert frozen == {"ok": True, "version": store.version} and store.frozen
        wrote = threading.Event()
        writer = threading.Thread(target=write_then_set, args=(store, "d", wrote))
        writer.start()
        assert not wrote.wait(0.2), "a write went through a frozen store"
        assert ask(sock, {"op": "status"})["frozen"] is True
        assert ask(sock, {"op": "resume"}) == {"ok": True}
        assert wrote.wait(WAIT_S)
        writer.join(WAIT_S)
        assert store.get("d") == 1


@pytest.mark.parametrize("msg, error", [
    ({"op": "open", "move": "m"}, "unknown op 'open'"),
    ({"op": "changes"}, "KeyError: 'since'"),
    ({"op": "apply", "puts": "nope"}, "apply: puts and deletes must be lists"),
    ({"op": "apply", "puts": [["k", "text, not bin"]]}, "malformed put entry [str, str]"),
    ({"op": "apply", "puts": [["k", b"\x01ab", 1]]}, "malformed put entry [str, bytes, int]"),
])
def test_a_bad_request_is_a_final_error(agent: LocalAgent, store: StateStore,
                                        msg: dict[str, Any], error: str) -> None:
    version = store.version
    with connect(agent.socket_path) as sock:
        reply = ask(sock, msg)
        assert reply["ok"] is False and reply["retryable"] is False
        assert error in reply["error"], reply
        assert store.version == version
        assert ask(sock, {"op": "status"})["ok"] is True  # the connection goes on


def test_a_large_state_streams_in_bounded_messages(sockdir: Path) -> None:
    store = StateStore()
    for i in range(480):  # 30 MB of 64 KiB values...
        store.set(f"v{i:04d}", os.urandom(64 * 1024))
    big = os.urandom(MAX_MESSAGE + 3 * 1024 * 1024 + 7)  # ... and one value over the limit
    store.set("big", big)
    agent = serve(store, sockdir / "app.sock")
    try:
        with connect(agent.socket_path) as sock:
            msgs, sizes = stream(sock, 0)
    finally:
        agent.stop()
    assert len(msgs) > (480 * 64 * 1024 + len(big)) // (BATCH_BYTES + PIECE_BYTES)
    assert max(sizes) <= BATCH_BYTES + PIECE_BYTES + 64 * 1024 < MAX_MESSAGE
    assert msgs[-1] == {"ok": True, "more": False, "version": store.version, "written": 481,
                        "deleted": 0}
    values, deletes = values_of(msgs)
    assert deletes == [] and len(values) == 481
    state = StoreState(store)
    assert all(values[k] == state.encode(k) for k in values)
    pieces = [e for m in msgs[:-1] for e in m["puts"] if len(e) == 3]
    assert len(pieces) == -(-len(state.encode("big") or b"") // PIECE_BYTES)


def test_streaming_holds_a_few_batches_not_the_state(sockdir: Path) -> None:
    """Both ends in this process (the agent, and the relay's reader of its stream), so one
    trace sees them: 64 MB stream through with a few batches in memory at a time."""
    store = StateStore()
    for i in range(1024):
        store.set(f"v{i:04d}", os.urandom(64 * 1024))
    agent = serve(store, sockdir / "app.sock")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        changes = AppSource(agent.socket_path).changes(0)
        try:
            count = sum(1 for _ in changes)
        finally:
            changes.close()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        agent.stop()
    assert count == 1024 and changes.summary["written"] == 1024
    assert peak < 6 * BATCH_BYTES, f"{peak} bytes held for a 64 MB stream"


def test_changes_since_a_version_and_apply_elsewhere(agent: LocalAgent, store: StateStore,
                                                    sockdir: Path) -> None:
    target = StateStore()
    other = serve(target, sockdir / "other.sock")
    try:
        with connect(agent.socket_path) as src, connect(other.socket_path) as dst:
            msgs, _ = stream(src, 0)
            values, _ = values_of(msgs)
            since = msgs[-1]["version"]
            assert ask(dst, {"op": "apply", "puts": [[k, v] for k, v in values.items()],
                             "deletes": []})["version"] == target.version
            assert target.digest() == store.digest()

            store.set("a", 2)
            store.delete("b")
            long = b"\x01" + os.urandom(100_000)
            store.set("long", long[1:])
            msgs, _ = stream(src, since)
            assert msgs[-1] == {"ok": True, "more": False, "version": store.version,
                                "written": 2, "deleted": 1}
            values, deletes = values_of(msgs)
            assert sorted(values) == ["a", "long"] and deletes == ["b"]
            # a value in pieces may span two apply requests of one connection
            assert ask(dst, {"op": "apply", "puts": [["a", values["a"]],
                                                     ["long", long[:60_000], len(long)]]})["ok"]
            assert "long" not in target
            assert ask(dst, {"op": "apply", "puts": [["long", long[60_000:], len(long)]],
                             "deletes": ["b"]})["ok"]
            assert target.digest() == store.digest()
    finally:
        other.stop()


def test_an_interrupted_value_is_refused(agent: LocalAgent, store: StateStore) -> None:
    version = store.version
    with connect(agent.socket_path) as sock:
        reply = ask(sock, {"op": "apply", "puts": [["x", b"\x01abc", 10], ["y", b"\x01z"]]})
        assert reply["ok"] is False and "interrupted by 'y'" in reply["error"]
        reply = ask(sock, {"op": "apply", "puts": [], "deletes": ["a"]})
        assert reply["ok"] is False and "interrupted by the deletion of 'a'" in reply["error"]
    assert "y" not in store and "a" in store and store.version == version


def test_socket_mode_and_stop_ends_connections(store: StateStore, sockdir: Path) -> None:
    agent = serve(store, sockdir / "app.sock")
    assert stat.S_IMODE(os.stat(agent.socket_path).st_mode) == 0o600
    with connect(agent.socket_path) as sock:
        assert ask(sock, {"op": "status"})["ok"] is True
        agent.stop()
        # a peer blocked on this connection sees it end, it does not wait for ever
        assert sock.recv(1) == b""
    assert not os.path.exists(agent.socket_path)


IN_CONTAINER = """
import importlib, importlib.util, json, sys
def loaded():
    return {n.split(".")[0] for n, mod in sys.modules.items() if mod is not None}
for name in ("cryptography", "redis", "hiredis"):
    sys.modules[name] = None  # importing it now raises ImportError
import msgpack
base = loaded()  # the interpreter's own, and what msgpack brings (its Cython runtime)
for m in ("state_transfer.local", "state_transfer.store", "state_transfer.directory",
          "state_transfer.errors", "state_transfer.states", "state_transfer.messages",
          "state_transfer.serving", "dataplane.lab.workloads.sessions"):
    importlib.import_module(m)
spec = importlib.util.spec_from_file_location("counter", "examples/counter/rootfs/app/counter.py")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
third = sorted(loaded() - base - set(sys.stdlib_module_names)
               - {"state_transfer", "dataplane", "counter"})
sts = sorted(n for n, mod in sys.modules.items() if n.startswith("state_transfer.") and mod)
dps = sorted(n for n, mod in sys.modules.items() if n.startswith("dataplane") and mod)
print(json.dumps({"third": third, "sdk": sts, "dataplane": dps}))
"""


def test_the_in_container_modules_need_no_crypto_nor_redis() -> None:
    out = subprocess.run([sys.executable, "-c", IN_CONTAINER], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert loaded["third"] == []  # beyond msgpack, imported first
    assert loaded["sdk"] == [f"state_transfer.{m}" for m in (
        "directory", "errors", "local", "messages", "serving", "states", "store")]
    assert loaded["dataplane"] == ["dataplane", "dataplane.lab", "dataplane.lab.workloads",
                                   "dataplane.lab.workloads.files",
                                   "dataplane.lab.workloads.sessions"]
