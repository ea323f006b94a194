"""Two real agents on Unix sockets, driven through AgentClient, over a real Redis server.

Aspects: 64 MB of state (1,024 random 64 KiB values) moves in one round intact, one frame per
value; writes and deletes made while pre-copy rounds run are not lost once the source is
frozen and the final delta shipped; ``open`` is idempotent (a second open, even with another
key, keeps the session); ``snapshot`` and ``restore`` of an unknown move are errors; a target
whose Redis password is wrong fails its restore with an authentication error instead of
hanging; the ``corrupt_seq`` fault makes the restore fail its authentication when faults are
allowed and is ignored when they are not; directory mode moves a tree of files (and a later
round its changes and deletions) with equal digests; ending a session (``close``, ``stop``)
closes the source's connection to Redis.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from state_transfer import keys
from state_transfer.agent import Agent, StoreState, directory_agent
from state_transfer.control import AgentClient
from state_transfer.errors import StateTransferError
from state_transfer.frames import new_key
from state_transfer.store import StateStore
from tests.conftest import RedisServer

WAIT_S = 60.0  # an upper bound for a call, never a measured time
STALL_S = 10.0  # the agents' stall timeout: a would-be hang ends as an error within it


def _close_writers(agent: Agent) -> None:
    # Agent.stop() and the "close" op close each session's redis-py client but not the raw
    # RESP writer its Sender opened (see test_ending_a_session_closes_the_source_writer);
    # closed here so the leak does not surface as a ResourceWarning in an unrelated test.
    for s in agent.sessions.values():
        if s.sender is not None and s.sender.writer is not None:
            s.sender.writer.close()


class Agents:
    """Starts agents and clients in one test's directory and stops them all at the end."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.tmp_path = tmp_path
        self.url = url
        self.agents: list[Agent] = []
        self.clients: list[AgentClient] = []

    def start(self, agent: Agent) -> AgentClient:
        agent.start()
        self.agents.append(agent)
        return self.client(agent.socket_path)

    def store_agent(self, name: str, store: StateStore, *,
                    faults_allowed: bool = False) -> tuple[Agent, AgentClient]:
        agent = Agent(StoreState(store), socket_path=str(self.tmp_path / f"{name}.sock"),
                      faults_allowed=faults_allowed)
        return agent, self.start(agent)

    def client(self, socket_path: str) -> AgentClient:
        c = AgentClient(socket_path, timeout=WAIT_S)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for a in self.agents:
            _close_writers(a)
            a.stop()


@pytest.fixture
def agents(tmp_path: Path, redis_server: RedisServer) -> Iterator[Agents]:
    made = Agents(tmp_path, redis_server.url)
    try:
        yield made
    finally:
        made.close()


def open_move(source: AgentClient, target: AgentClient, *, move: str, url: str,
              key: bytes | None = None, target_url: str | None = None) -> None:
    key = new_key() if key is None else key
    source.call("open", move=move, key=key, role="source", redis_url=url,
                stall_timeout_s=STALL_S)
    target.call("open", move=move, key=key, role="target", redis_url=target_url or url,
                stall_timeout_s=STALL_S)


def run_round(pool: ThreadPoolExecutor, source: AgentClient, target: AgentClient, *,
              move: str, rnd: int, since: int,
              **snapshot: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The orchestrator's round: the target restores in a thread while the source snapshots."""
    restoring = pool.submit(target.call, "restore", move=move, round=rnd)
    sent = source.call("snapshot", move=move, round=rnd, since=since, **snapshot)
    restored = restoring.result(timeout=WAIT_S)
    assert restored["frames"] == sent["frames"]
    assert restored["version"] == sent["version"] and restored["keys"] == sent["keys"]
    return sent, restored


def digests(source: AgentClient, target: AgentClient) -> tuple[str, str]:
    return source.call("digest")["digest"], target.call("digest")["digest"]


def test_64_mb_in_one_round_arrive_intact(agents: Agents, pool: ThreadPoolExecutor,
                                          move: str, redis_server: RedisServer) -> None:
    src_store, dst_store = StateStore(), StateStore()
    for i in range(1024):
        src_store.set(f"v{i:04d}", os.urandom(64 * 1024))
    _, source = agents.store_agent("src", src_store)
    _, target = agents.store_agent("dst", dst_store)
    open_move(source, target, move=move, url=agents.url)

    sent, _ = run_round(pool, source, target, move=move, rnd=1, since=0)
    assert sent["keys"] == 1024
    assert sent["frames"] == 1024  # a 64 KiB value is one frame
    assert sent["bytes"] > 64 * 1024 * 1024
    assert sent["version"] == src_store.version
    assert len(dst_store) == 1024
    assert src_store.digest() == dst_store.digest()
    assert digests(source, target)[0] == digests(source, target)[1]
    r = redis.Redis.from_url(redis_server.url)
    try:
        assert r.xlen(keys.state_frames(move)) == 0  # the target consumed every entry
    finally:
        r.close()


class Writer:
    """The application writing and deleting on the source while the rounds run."""

    def __init__(self, store: StateStore, *, keys_: int) -> None:
        self.store = store
        self.keys = keys_
        self.sets = self.deletes = 0
        self.stop = threading.Event()
        self.progress = threading.Condition()
        self.rng = random.Random(7)
        self.thread = threading.Thread(target=self._run, name="app-writer", daemon=True)
        self.error: BaseException | None = None

    @property
    def ops(self) -> int:
        return self.sets + self.deletes

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                key = f"k{self.rng.randrange(self.keys)}"
                if self.rng.random() < 0.3:
                    self.store.delete(key)
                    self.deletes += 1
                else:
                    self.store.set(key, {"n": self.ops, "blob": os.urandom(
                        self.rng.randrange(10, 3000))})
                    self.sets += 1
                with self.progress:
                    self.progress.notify_all()
                self.stop.wait(0.0005)  # pacing, so the rounds get the CPU too
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_ops(self, n: int) -> bool:
        with self.progress:
            return self.progress.wait_for(lambda: self.ops >= n, timeout=WAIT_S)


def test_writes_and_deletes_during_precopy_are_not_lost(
        agents: Agents, pool: ThreadPoolExecutor, move: str) -> None:
    src_store, dst_store = StateStore(), StateStore()
    for i in range(300):
        src_store.set(f"k{i}", {"n": -1, "blob": os.urandom(2000)})
    _, source = agents.store_agent("src", src_store)
    _, target = agents.store_agent("dst", dst_store)
    open_move(source, target, move=move, url=agents.url)

    writer = Writer(src_store, keys_=400)
    writer.thread.start()
    since, shipped = 0, []
    try:
        for rnd in (1, 2, 3):
            before = writer.ops
            sent, _ = run_round(pool, source, target, move=move, rnd=rnd, since=since)
            shipped.append(sent["keys"])
            since = sent["version"]
            # let the application change things before the next round
            assert writer.wait_ops(before + 100)
    finally:
        writer.stop.set()
        writer.thread.join(WAIT_S)
    assert not writer.thread.is_alive() and writer.error is None
    assert writer.sets > 0 and writer.deletes > 0
    assert all(n > 0 for n in shipped)
    assert src_store.digest() != dst_store.digest()  # the target is behind before the freeze

    frozen_at = source.call("freeze")["version"]
    try:
        assert source.call("status")["frozen"] is True
        sent, _ = run_round(pool, source, target, move=move, rnd=4, since=since)
        assert sent["version"] == frozen_at
        target.call("resume")
        assert target.call("status")["frozen"] is False
        src_digest, dst_digest = digests(source, target)
        assert src_digest == dst_digest
        assert sorted(dst_store.keys()) == sorted(src_store.keys())
        assert all(dst_store.get(k) == v for k, v in src_store.items())
    finally:
        source.call("resume")


def test_open_is_idempotent(agents: Agents, pool: ThreadPoolExecutor, move: str) -> None:
    src_store, dst_store = StateStore(), StateStore()
    src_store.set("a", 1)
    src_agent, source = agents.store_agent("src", src_store)
    _, target = agents.store_agent("dst", dst_store)
    open_move(source, target, move=move, url=agents.url)
    session = src_agent.sessions[move]
    sent, _ = run_round(pool, source, target, move=move, rnd=1, since=0)

    # a retried phase opens again (the orchestrator even makes a new key): nothing changes
    open_move(source, target, move=move, url=agents.url)
    open_move(source, target, move=move, url=agents.url, key=new_key())
    assert src_agent.sessions[move] is session
    assert source.call("status")["sessions"] == [move]
    assert target.call("status")["sessions"] == [move]

    src_store.set("b", 2)
    src_store.delete("a")
    run_round(pool, source, target, move=move, rnd=2, since=sent["version"])
    assert dst_store.get("b") == 2 and "a" not in dst_store
    assert src_store.digest() == dst_store.digest()


def test_snapshot_and_restore_of_an_unknown_move_are_errors(agents: Agents,
                                                            move: str) -> None:
    _, source = agents.store_agent("src", StateStore())
    _, target = agents.store_agent("dst", StateStore())
    with pytest.raises(StateTransferError, match="no source session") as info:
        source.call("snapshot", move=move, round=1, since=0)
    assert not info.value.retryable
    with pytest.raises(StateTransferError, match="no target session"):
        target.call("restore", move=move, round=1)
    # a target session is not a source session
    target.call("open", move=move, key=new_key(), role="target", redis_url=agents.url)
    with pytest.raises(StateTransferError, match="no source session"):
        target.call("snapshot", move=move, round=1, since=0)
    with pytest.raises(StateTransferError, match="role must be source or target"):
        source.call("open", move=move, key=new_key(), role="both", redis_url=agents.url)


def test_a_target_with_a_wrong_redis_password_fails_its_restore(
        agents: Agents, redis_server: RedisServer, move: str) -> None:
    _, target = agents.store_agent("dst", StateStore())
    bad = redis_server.url.replace(redis_server.password, "not-the-password")
    assert bad != redis_server.url
    target.call("open", move=move, key=new_key(), role="target", redis_url=bad,
                stall_timeout_s=STALL_S)
    # the message tells it is the password, not a stall (which would also end in an error)
    with pytest.raises(StateTransferError, match=r"(?i)authentication|password"):
        target.call("restore", move=move, round=1)


@pytest.mark.parametrize("faults_allowed", [True, False])
def test_corrupt_seq_fault(agents: Agents, move: str, faults_allowed: bool) -> None:
    src_store, dst_store = StateStore(), StateStore()
    for i in range(5):
        src_store.set(f"k{i}", os.urandom(100))
    _, source = agents.store_agent("src", src_store, faults_allowed=faults_allowed)
    _, target = agents.store_agent("dst", dst_store)
    open_move(source, target, move=move, url=agents.url)
    # small enough for the stream to hold it all: snapshot, then restore
    sent = source.call("snapshot", move=move, round=1, since=0, corrupt_seq=2)
    assert sent["frames"] == 5
    if faults_allowed:
        with pytest.raises(StateTransferError, match="authentication failed"):
            target.call("restore", move=move, round=1)
        assert "k1" not in dst_store  # the corrupted frame was never applied
    else:
        assert target.call("restore", move=move, round=1)["frames"] == 5
        assert src_store.digest() == dst_store.digest()


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_directory_mode(agents: Agents, pool: ThreadPoolExecutor, tmp_path: Path,
                        move: str) -> None:
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    files = {"top": b"t", "a/b/c.bin": os.urandom(200_000), "a/empty": b"",
             "d/e.json": b"{}"}
    for rel, data in files.items():
        _write(src_dir, rel, data)
    source = agents.start(directory_agent(str(src_dir), socket_path=str(tmp_path / "s.sock")))
    target = agents.start(directory_agent(str(dst_dir), socket_path=str(tmp_path / "d.sock")))
    open_move(source, target, move=move, url=agents.url)

    sent, _ = run_round(pool, source, target, move=move, rnd=1, since=0)
    assert sent["keys"] == len(files)
    assert digests(source, target)[0] == digests(source, target)[1]
    for rel, data in files.items():
        assert (dst_dir / rel).read_bytes() == data

    _write(src_dir, "a/b/new", b"new")
    _write(src_dir, "top", b"rewritten")
    (src_dir / "d/e.json").unlink()
    source.call("freeze")
    run_round(pool, source, target, move=move, rnd=2, since=sent["version"])
    target.call("resume")
    src_digest, dst_digest = digests(source, target)
    assert src_digest == dst_digest
    assert not (dst_dir / "d/e.json").exists()
    assert (dst_dir / "top").read_bytes() == b"rewritten"


def _end_by_close(agent: Agent, client: AgentClient, move: str) -> None:
    client.call("close", move=move)


def _end_by_stop(agent: Agent, client: AgentClient, move: str) -> None:
    client.close()
    agent.stop()


@pytest.mark.parametrize("end", [_end_by_close, _end_by_stop], ids=["close", "stop"])
def test_ending_a_session_closes_the_source_writer(
        agents: Agents, pool: ThreadPoolExecutor, move: str,
        end: Callable[[Agent, AgentClient, str], None]) -> None:
    src_store = StateStore()
    src_store.set("a", 1)
    src_agent, source = agents.store_agent("src", src_store)
    _, target = agents.store_agent("dst", StateStore())
    open_move(source, target, move=move, url=agents.url)
    run_round(pool, source, target, move=move, rnd=1, since=0)
    sender = src_agent.sessions[move].sender
    assert sender is not None and sender.writer is not None
    writer = sender.writer
    try:
        end(src_agent, source, move)
        assert writer.sock.fileno() == -1, "the source's Redis connection is left open"
    finally:
        writer.close()
