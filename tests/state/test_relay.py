"""Two applications' LocalAgents, each behind a Relay, driven through AgentClient over a real
Redis server, as the orchestrator drives in-process agents.

Aspects: state moves intact through two relays (digest equal), over incremental pre-copy
rounds with writes and deletes and a final delta under the freeze; a relay gives the very
results (version, frames, bytes, keys) an in-process Agent gives for the same state and
rounds; ``freeze`` through a relay holds the application's writers until ``resume``, and
``status`` shows it with the relay's sessions; a state larger than ``MAX_MESSAGE`` (40 MB,
with one value over the limit alone) moves in batches, its long value in as many frames as
in-process; a missing application socket is a retryable error for the state's ops and for
``snapshot``, and the relay serves once the application is there; an application closing
its connection mid-stream, or answering with an error, fails the snapshot with that reason
instead of hanging; ``corrupt_seq`` through a relay fails the restore's authentication; the
relay process (``python -m state_transfer.relay``) creates its socket mode 0600, ends
cleanly on SIGTERM, and killed mid-restore makes the pending call fail at once and the
next one, on its successor, fail with a clear final error; the counter example runs as a
process, counts over loopback UDP, holds requests while frozen, and its counters continue
on a second instance after a move through relays.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from state_transfer.agent import Agent
from state_transfer.control import AgentClient
from state_transfer.errors import StateTransferError
from state_transfer.frames import CHUNK_SIZE, new_key
from state_transfer.local import LocalAgent
from state_transfer.messages import MAX_MESSAGE, recv_message, send_message
from state_transfer.relay import Relay
from state_transfer.states import StoreState
from state_transfer.store import StateStore
from tests.conftest import REPO, RedisServer
from tests.state.test_agents import STALL_S, WAIT_S, open_move, run_round
from tests.state.test_local import write_then_set

REQUEST = struct.Struct("!IQ")
REPLY = struct.Struct("!IQQ")


class Apps:
    """Applications (LocalAgents) and their relays in one test's directory, all stopped at the
    end, with the orchestrator's clients to the relays."""

    def __init__(self, sockdir: Path) -> None:
        self.dir = sockdir
        self.stoppable: list[LocalAgent | Relay | Agent] = []
        self.clients: list[AgentClient] = []

    def app(self, name: str, store: StateStore) -> LocalAgent:
        agent = LocalAgent(StoreState(store), socket_path=str(self.dir / f"{name}-app.sock"))
        agent.start()
        self.stoppable.append(agent)
        return agent

    def relay(self, name: str, *, faults_allowed: bool = False) -> tuple[Relay, AgentClient]:
        relay = Relay(str(self.dir / f"{name}-app.sock"), str(self.dir / f"{name}.sock"),
                      faults_allowed=faults_allowed)
        relay.start()
        self.stoppable.append(relay)
        return relay, self.client(relay.listen_socket)

    def pair(self, name: str, store: StateStore, *,
             faults_allowed: bool = False) -> AgentClient:
        """An application with its relay; the orchestrator's client to the relay."""
        self.app(name, store)
        return self.relay(name, faults_allowed=faults_allowed)[1]

    def agent(self, name: str, store: StateStore) -> AgentClient:
        """An in-process agent, for comparison."""
        agent = Agent(StoreState(store), socket_path=str(self.dir / f"{name}.sock"))
        agent.start()
        self.stoppable.append(agent)
        return self.client(agent.socket_path)

    def client(self, path: str) -> AgentClient:
        c = AgentClient(path, timeout=WAIT_S)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for s in reversed(self.stoppable):
            s.stop()


@pytest.fixture
def apps(sockdir: Path) -> Iterator[Apps]:
    made = Apps(sockdir)
    try:
        yield made
    finally:
        made.close()


def filled(n: int, *, seed: int = 0) -> StateStore:
    store = StateStore()
    for i in range(n):
        store.set(f"k{i:04d}", os.urandom(64 * 1024) if i % 3 == 0 else {"n": i, "seed": seed})
    return store


def digests(*clients: AgentClient) -> set[str]:
    return {c.call("digest")["digest"] for c in clients}


def test_a_move_through_two_relays(apps: Apps, pool: ThreadPoolExecutor, move: str,
                                   redis_server: RedisServer) -> None:
    src_store, dst_store = filled(300), StateStore()
    source, target = apps.pair("src", src_store), apps.pair("dst", dst_store)
    open_move(source, target, move=move, url=redis_server.url)

    sent, _ = run_round(pool, source, target, move=move, rnd=1, since=0)
    assert sent["keys"] == 300 and sent["version"] == src_store.version
    assert len(digests(source, target)) == 1

    # pre-copy: the application writes and deletes between rounds
    src_store.set("k0001", {"n": "rewritten"})
    src_store.set("new", os.urandom(200_000))  # several frames
    src_store.delete("k0002")
    sent, _ = run_round(pool, source, target, move=move, rnd=2, since=sent["version"])
    assert sent["keys"] == 3 and sent["frames"] == 1 + -(-200_001 // CHUNK_SIZE) + 1
    assert "k0002" not in dst_store and dst_store.get("k0001") == {"n": "rewritten"}

    src_store.delete("k0003")
    frozen_at = source.call("freeze")["version"]
    try:
        sent, _ = run_round(pool, source, target, move=move, rnd=3, since=sent["version"])
        assert sent["version"] == frozen_at and sent["keys"] == 1
        target.call("resume")
        assert len(digests(source, target)) == 1
        assert src_store.digest() == dst_store.digest()
        status = target.call("status")
        assert status["frozen"] is False and status["keys"] == len(src_store)
        assert status["sessions"] == [move]
    finally:
        source.call("resume")


def test_a_relay_gives_the_results_of_an_in_process_agent(
        apps: Apps, pool: ThreadPoolExecutor, redis_server: RedisServer) -> None:
    results: dict[str, list[tuple[Any, ...]]] = {}
    for how in ("agent", "relay"):
        src_store = filled(120)
        if how == "agent":
            source, target = apps.agent(f"{how}-s", src_store), apps.agent(f"{how}-t",
                                                                           StateStore())
        else:
            source = apps.pair(f"{how}-s", src_store)
            target = apps.pair(f"{how}-t", StateStore())
        mv = f"t-relay-{how}-{uuid.uuid4().hex}"
        open_move(source, target, move=mv, url=redis_server.url)
        got, since = [], 0
        for rnd in (1, 2):
            sent, restored = run_round(pool, source, target, move=mv, rnd=rnd, since=since)
            got.append((sent["version"], sent["frames"], sent["bytes"], sent["keys"],
                        restored["bytes"]))
            since = sent["version"]
            for i in range(0, 120, 7):  # the same writes in both runs
                src_store.set(f"k{i:04d}", b"x" * i) if i % 2 else src_store.delete(f"k{i:04d}")
        results[how] = got
    assert results["relay"] == results["agent"]


def test_freeze_through_a_relay_holds_the_application(apps: Apps) -> None:
    store = filled(3)
    relay = apps.pair("app", store)
    frozen = relay.call("freeze")
    assert frozen["version"] == store.version and store.frozen
    wrote = threading.Event()
    writer = threading.Thread(target=write_then_set, args=(store, "w", wrote), daemon=True)
    writer.start()
    try:
        assert not wrote.wait(0.2), "the application wrote while frozen"
        status = relay.call("status")
        assert status["frozen"] is True and status["version"] == frozen["version"]
        assert status["sessions"] == [] and status["keys"] == 3
    finally:
        relay.call("resume")
    assert wrote.wait(WAIT_S)
    assert store.get("w") == 1 and relay.call("status")["frozen"] is False
    assert relay.call("digest", prefix="k")["digest"] == store.digest("k")


def test_a_state_larger_than_a_message_moves_in_batches(
        apps: Apps, pool: ThreadPoolExecutor, move: str, redis_server: RedisServer) -> None:
    src_store, dst_store = StateStore(), StateStore()
    for i in range(350):
        src_store.set(f"v{i:04d}", os.urandom(64 * 1024))
    big = os.urandom(MAX_MESSAGE + 2 * 1024 * 1024 + 5)  # 40 MB in all
    src_store.set("big", big)
    source, target = apps.pair("src", src_store), apps.pair("dst", dst_store)
    open_move(source, target, move=move, url=redis_server.url)
    sent, _ = run_round(pool, source, target, move=move, rnd=1, since=0)
    assert sent["keys"] == 351
    assert sent["frames"] == 350 + -(-(len(big) + 1) // CHUNK_SIZE)  # as split() cuts it
    assert dst_store.get("big") == big
    assert src_store.digest() == dst_store.digest()


def test_a_missing_application_is_a_retryable_error(apps: Apps, move: str,
                                                    redis_server: RedisServer) -> None:
    _, relay = apps.relay("late")
    for op in ("status", "digest", "freeze", "resume"):
        with pytest.raises(StateTransferError, match="not there") as err:
            relay.call(op)
        assert err.value.retryable, op
    relay.call("open", move=move, key=new_key(), role="source", redis_url=redis_server.url,
               stall_timeout_s=STALL_S)
    with pytest.raises(StateTransferError, match="not there") as err:
        relay.call("snapshot", move=move, round=1, since=0)
    assert err.value.retryable
    store = filled(2)
    apps.app("late", store)  # the application comes up: the same relay now serves
    assert relay.call("status")["keys"] == 2
    assert relay.call("snapshot", move=move, round=1, since=0)["keys"] == 2


class FakeApp:
    """An application that answers ``changes`` with one batch, then ``ending``: closing the
    connection, or an error message."""

    def __init__(self, path: Path, ending: str) -> None:
        self.ending = ending
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            msg = recv_message(conn)
            assert msg is not None and msg["op"] == "changes"
            send_message(conn, {"ok": True, "more": True, "puts": [["k", b"\x01v"]],
                                "deletes": []})
            if self.ending == "error":
                send_message(conn, {"ok": False, "error": "disk on fire", "retryable": False})

    def close(self) -> None:
        self.thread.join(WAIT_S)
        self.sock.close()


@pytest.mark.parametrize("ending, error", [
    ("close", "the application closed its state connection during changes"),
    ("error", "disk on fire"),
])
def test_an_application_failing_mid_stream_fails_the_snapshot(
        apps: Apps, sockdir: Path, move: str, redis_server: RedisServer, ending: str,
        error: str) -> None:
    fake = FakeApp(sockdir / "fake-app.sock", ending)
    try:
        _, relay = apps.relay("fake")
        relay.call("open", move=move, key=new_key(), role="source",
                   redis_url=redis_server.url, stall_timeout_s=STALL_S)
        with pytest.raises(StateTransferError, match=error) as err:
            relay.call("snapshot", move=move, round=1, since=0)
        assert not err.value.retryable
    finally:
        fake.close()


@pytest.mark.parametrize("faults_allowed", [True, False])
def test_corrupt_seq_through_a_relay(apps: Apps, move: str, redis_server: RedisServer,
                                     faults_allowed: bool) -> None:
    src_store, dst_store = filled(5), StateStore()
    source = apps.pair("src", src_store, faults_allowed=faults_allowed)
    target = apps.pair("dst", dst_store)
    open_move(source, target, move=move, url=redis_server.url)
    assert source.call("snapshot", move=move, round=1, since=0, corrupt_seq=2)["frames"] == 5
    if faults_allowed:
        with pytest.raises(StateTransferError, match="authentication failed"):
            target.call("restore", move=move, round=1)
        assert "k0001" not in dst_store  # the corrupted frame was never applied
    else:
        assert target.call("restore", move=move, round=1)["frames"] == 5
        assert src_store.digest() == dst_store.digest()


def start_relay(app: Path, listen: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "state_transfer.relay", "--app", str(app),
                                 "--listen", str(listen)], cwd=REPO, stdout=fh, stderr=fh)
    deadline = time.monotonic() + WAIT_S
    while True:  # until it accepts (a dead predecessor may have left its socket file)
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the relay did not start"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(listen))
                return proc
            except OSError:
                time.sleep(0.02)


def test_the_relay_process_restarted_mid_way(apps: Apps, sockdir: Path, move: str,
                                             redis_server: RedisServer) -> None:
    store = filled(4)
    apps.app("p", store)
    app, listen, log = sockdir / "p-app.sock", sockdir / "p.sock", sockdir / "relay.log"
    proc = start_relay(app, listen, log)
    try:
        assert stat.S_IMODE(os.stat(listen).st_mode) == 0o600
        client = apps.client(str(listen))
        client.call("open", move=move, key=new_key(), role="target",
                    redis_url=redis_server.url, stall_timeout_s=60)
        # a restore waits for frames that never come; the relay dies under it
        failed: list[BaseException] = []
        pending = threading.Thread(target=lambda: _catch(failed, client.call, "restore",
                                                         move=move, round=1), daemon=True)
        pending.start()
        wait_blocked_reader(redis_server)  # the restore is waiting in Redis
        proc.kill()
        proc.wait(WAIT_S)
        pending.join(10)
        assert not pending.is_alive(), "the orchestrator's call hangs on a dead relay"
        assert failed and isinstance(failed[0], StateTransferError)
        assert "closed the connection during restore" in str(failed[0])

        proc = start_relay(app, listen, log)  # its successor knows no session
        with pytest.raises(StateTransferError, match=f"no target session for move {move}") as e:
            client.call("restore", move=move, round=1)
        assert not e.value.retryable
        assert client.call("status")["keys"] == 4  # the application was never touched

        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0
        assert not listen.exists()
        text = log.read_text()
        assert "state relay: stopped" in text and "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)


def wait_blocked_reader(server: RedisServer) -> None:
    r = redis.Redis.from_url(server.url)
    try:
        deadline = time.monotonic() + WAIT_S
        while not any(c.get("cmd") == "xread" for c in r.client_list()):
            assert time.monotonic() < deadline, "the restore never reached Redis"
            time.sleep(0.02)
    finally:
        r.close()


def _catch(out: list[BaseException], fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # reported by the test
        out.append(exc)


# --- the counter example, as its user would run it ---

COUNTER = REPO / "examples" / "counter" / "rootfs" / "app" / "counter.py"


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counter:
    """counter.py as a process, and a UDP client of it."""

    def __init__(self, sockdir: Path, name: str, *, restore: bool = False) -> None:
        self.port = udp_port()
        self.socket_path = sockdir / f"{name}-app.sock"
        env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(REPO),
               "PORT": str(self.port), "STATE_SOCKET": str(self.socket_path),
               **({"RESTORE": "1"} if restore else {})}
        self.log = open(sockdir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, str(COUNTER)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.1)
        deadline = time.monotonic() + WAIT_S
        while not self.socket_path.exists():
            assert self.proc.poll() is None, "the counter exited"
            assert time.monotonic() < deadline, "the counter did not start"
            time.sleep(0.02)

    def ask(self, session: int, seq: int, *, within: float = WAIT_S) -> int | None:
        """The counter the service answers ``(session, seq)`` with, retransmitting as a
        client does; None if nothing came ``within`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.sock.sendto(REQUEST.pack(session, seq), ("127.0.0.1", self.port))
            try:
                while True:
                    data = self.sock.recv(64)
                    s, q, counter = REPLY.unpack(data)
                    if (s, q) == (session, seq):
                        return int(counter)
            except TimeoutError:
                continue
        return None

    def stop(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)
        self.log.close()


def test_the_counter_example_moves(apps: Apps, sockdir: Path, pool: ThreadPoolExecutor,
                                   move: str, redis_server: RedisServer) -> None:
    first = Counter(sockdir, "one")
    second: Counter | None = None
    try:
        sessions = (11, 22, 33)
        for seq in range(1, 21):
            for s in sessions:
                assert first.ask(s, seq) == seq
        assert first.ask(22, 7) == 7  # a retransmission is answered from the state
        assert first.ask(11, 25, within=0.3) is None  # ahead of its order: dropped

        second = Counter(sockdir, "two", restore=True)
        _, source = apps.relay("one")
        _, target = apps.relay("two")
        open_move(source, target, move=move, url=redis_server.url)
        sent, _ = run_round(pool, source, target, move=move, rnd=1, since=0)
        assert sent["keys"] == len(sessions)
        assert first.ask(33, 21) == 21  # the source serves on during pre-copy
        source.call("freeze")
        assert first.ask(11, 21, within=0.3) is None  # frozen: it waits...
        run_round(pool, source, target, move=move, rnd=2, since=sent["version"])
        assert len(digests(source, target)) == 1
        # the target holds a request until it is resumed, and serves it then
        second.sock.sendto(REQUEST.pack(22, 21), ("127.0.0.1", second.port))
        with pytest.raises(TimeoutError):
            second.sock.recv(64)  # nothing while frozen (within its timeout)
        target.call("resume")
        second.sock.settimeout(WAIT_S)
        assert REPLY.unpack(second.sock.recv(64)) == (22, 21, 21)  # sent once, answered
        second.sock.settimeout(0.1)
        for seq in range(21, 31):  # the counters continue on the new instance
            for s in sessions:
                assert second.ask(s, seq) == seq
        assert second.ask(33, 21) == 21 and second.ask(11, 3) == 3
    finally:
        first.stop()
        if second is not None:
            second.stop()
