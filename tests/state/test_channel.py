"""The Redis channel of one move, on a real Redis server.

Aspects: a round (small, empty, exactly-one-chunk and multi-chunk values, deletes, and the END
frame built as the agent builds it) arrives intact and in order, and the next round continues
the sequence; the target drains the stream and acknowledges every byte; a corrupted, a
missing or a replayed entry in the stream is a FrameError, never a silently wrong state;
back-pressure: with a small window and no target the source stops appending and gives up
with a StateTransferError after its stall timeout, holding no more than the window and one
batch in Redis, while with a target applying it gets everything through the same window;
``expire`` shortens the TTL of every key of the move; the source's raw RESP writer reaches the
same server and user as the redis-py client it is made from (a password with ``/`` too), and
closes its socket when Redis refuses its password; the target reads one batch ahead: rounds
already in the stream before it reads (several, each many batches long) arrive each in its
own ``receive_round``, the frames read past a round's END kept for the next round, and every
byte acknowledged once a round returns.
"""

from __future__ import annotations

import os
import types
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import msgpack
import pytest
import redis

from state_transfer import channel, keys
from state_transfer.channel import BATCH, Receiver, Sender
from state_transfer.errors import FrameError, StateTransferError
from state_transfer.frames import CHUNK_SIZE, DELETE, END, PUT, FrameCodec, new_key, split
from state_transfer.resp import RespWriter
from tests.conftest import RedisServer

WAIT_S = 30.0  # an upper bound, never a measured time

FrameTuple = tuple[int, str, str, int, int, bytes]


@pytest.fixture
def clients(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """One client for the source, one for the target (they are different hosts in real life)."""
    src = redis.Redis.from_url(redis_server.url)
    dst = redis.Redis.from_url(redis_server.url)
    try:
        yield src, dst
    finally:
        src.close()
        dst.close()


@pytest.fixture
def writers() -> Iterator[list[RespWriter]]:
    """The source's RESP writers, closed at the end: a Sender never closes the writer it
    holds (it has no close), so the test that made it does."""
    made: list[RespWriter] = []
    try:
        yield made
    finally:
        for w in made:
            w.close()


@pytest.fixture
def move_id() -> str:
    return f"t-chan-{uuid.uuid4().hex}"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as ex:
        yield ex


def pair(src: redis.Redis, dst: redis.Redis, move: str, writers: list[RespWriter], *,
         stall_timeout_s: float = WAIT_S,
         max_inflight: int = channel.MAX_INFLIGHT) -> tuple[Sender, Receiver]:
    key = new_key()
    writer = RespWriter.from_client(src)
    writers.append(writer)
    sender = Sender(src, move, FrameCodec(key, move), stall_timeout_s=stall_timeout_s,
                    max_inflight=max_inflight, writer=writer)
    reader = RespWriter.from_client(dst)
    writers.append(reader)
    receiver = Receiver(dst, move, FrameCodec(key, move), stall_timeout_s=stall_timeout_s,
                        reader=reader)
    return sender, receiver


def data_frames(rnd: int, puts: dict[str, bytes], deletes: Iterable[str]) -> list[FrameTuple]:
    """The frames of a round, in the agent's order: chunked puts, then deletes."""
    out: list[FrameTuple] = []
    for key, data in puts.items():
        chunks = split(data)
        out += [(rnd, PUT, key, i, len(chunks), c) for i, c in enumerate(chunks)]
    out += [(rnd, DELETE, key, 0, 1, b"") for key in deletes]
    return out


def send_end(sender: Sender, rnd: int, *, version: int, count: int, nbytes: int,
             nkeys: int) -> None:
    """The END frame exactly as Agent._snapshot builds it."""
    end = msgpack.packb({"round": rnd, "version": version, "frames": count, "bytes": nbytes,
                         "keys": nkeys})
    sender.send([(rnd, END, "", 0, 1, bytes(end))])


def ship(sender: Sender, rnd: int, puts: dict[str, bytes], deletes: list[str], *,
         version: int = 1) -> tuple[int, int]:
    count, nbytes = sender.send(data_frames(rnd, puts, deletes))
    send_end(sender, rnd, version=version, count=count, nbytes=nbytes,
             nkeys=len(puts) + len(deletes))
    return count, nbytes


class Applied:
    def __init__(self) -> None:
        self.puts: dict[str, bytes] = {}
        self.order: list[tuple[str, str]] = []

    def put(self, key: str, data: bytes) -> None:
        self.puts[key] = data
        self.order.append((PUT, key))

    def delete(self, key: str) -> None:
        self.puts.pop(key, None)
        self.order.append((DELETE, key))


def receive(receiver: Receiver, rnd: int, applied: Applied) -> dict[str, Any]:
    return receiver.receive_round(rnd, put=applied.put, delete=applied.delete)


def entries(r: redis.Redis, move: str) -> list[tuple[bytes, bytes]]:
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(keys.state_frames(move)))
    return [(entry_id, fields[b"f"]) for entry_id, fields in rows]


def test_round_trip_with_chunked_values_and_deletes(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    sender, receiver = pair(src, dst, move_id, writers)
    puts = {
        "small": b"x",
        "empty": b"",
        "one-chunk": os.urandom(CHUNK_SIZE),
        "big": os.urandom(3 * CHUNK_SIZE + 17),
        "nested/key": os.urandom(5000),
    }
    deletes = ["gone-1", "gone-2"]
    count, nbytes = ship(sender, 1, puts, deletes, version=42)
    assert count == 1 + 1 + 1 + 4 + 1 + 2
    assert src.xlen(keys.state_frames(move_id)) == count + 1

    applied = Applied()
    summary = receive(receiver, 1, applied)
    assert applied.puts == puts
    assert applied.order == [(PUT, k) for k in puts] + [(DELETE, k) for k in deletes]
    assert summary["round"] == 1 and summary["version"] == 42
    assert summary["frames"] == count and summary["bytes"] == nbytes
    assert summary["keys"] == len(puts) + len(deletes)
    assert nbytes < summary["received_bytes"] == sender.sent_bytes  # the END frame too
    # the target consumed the stream and acknowledged every byte
    assert dst.xlen(keys.state_frames(move_id)) == 0
    assert int(cast(bytes, dst.get(keys.state_acked(move_id)))) == sender.sent_bytes

    # round 2 on the same channel: the sequence continues
    puts2 = {"big": os.urandom(2 * CHUNK_SIZE), "small": b"y"}
    count2, _ = ship(sender, 2, puts2, ["empty"], version=50)
    applied2 = Applied()
    summary2 = receive(receiver, 2, applied2)
    assert summary2["frames"] == count2 == 2 + 1 + 1 and summary2["version"] == 50
    assert applied2.puts == puts2
    assert applied2.order[-1] == (DELETE, "empty")
    assert receiver.sequencer.expected == sender.seq + 1


def test_an_empty_round_is_just_the_end_frame(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    sender, receiver = pair(*clients, move_id, writers)
    assert ship(sender, 1, {}, []) == (0, 0)
    applied = Applied()
    summary = receive(receiver, 1, applied)
    assert summary["frames"] == 0 and applied.order == []


def test_a_frame_of_another_round_is_refused(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    sender, receiver = pair(*clients, move_id, writers)
    ship(sender, 1, {"k": b"v"}, [])
    with pytest.raises(FrameError, match="round 1, expected 2"):
        receive(receiver, 2, Applied())


def test_a_corrupted_entry_is_a_frame_error(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    sender, receiver = pair(src, dst, move_id, writers, stall_timeout_s=5)
    puts = {"a": b"1" * 100, "b": b"2" * 100, "c": b"3" * 100}
    count, nbytes = sender.send(data_frames(1, puts, []))
    # corrupt the last data entry; re-adding it keeps it in place (it is the last one)
    entry_id, blob = entries(src, move_id)[-1]
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x01
    assert src.xdel(keys.state_frames(move_id), entry_id) == 1
    src.xadd(keys.state_frames(move_id), {"f": bytes(bad)})
    send_end(sender, 1, version=1, count=count, nbytes=nbytes, nkeys=3)

    applied = Applied()
    with pytest.raises(FrameError, match="authentication failed"):
        receive(receiver, 1, applied)
    assert "c" not in applied.puts  # the corrupt value was never applied


def test_a_missing_entry_is_a_frame_error(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    sender, receiver = pair(src, dst, move_id, writers, stall_timeout_s=5)
    ship(sender, 1, {"a": b"1", "b": b"2", "c": b"3"}, ["d"])
    second_id, _ = entries(src, move_id)[1]
    assert src.xdel(keys.state_frames(move_id), second_id) == 1
    applied = Applied()
    with pytest.raises(FrameError, match=r"frames 2\.\.2 missing"):
        receive(receiver, 1, applied)
    assert "b" not in applied.puts


def test_a_missing_chunk_is_a_frame_error(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    sender, receiver = pair(src, dst, move_id, writers, stall_timeout_s=5)
    ship(sender, 1, {"big": os.urandom(3 * CHUNK_SIZE)}, [])
    middle_id, _ = entries(src, move_id)[1]
    src.xdel(keys.state_frames(move_id), middle_id)
    applied = Applied()
    with pytest.raises(FrameError, match="missing"):
        receive(receiver, 1, applied)
    assert applied.puts == {}


def test_a_replayed_entry_is_a_frame_error(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    sender, receiver = pair(src, dst, move_id, writers, stall_timeout_s=5)
    puts = {"a": b"1", "b": b"2"}
    count, nbytes = sender.send(data_frames(1, puts, ["c"]))
    _, first = entries(src, move_id)[0]
    src.xadd(keys.state_frames(move_id), {"f": first})
    send_end(sender, 1, version=1, count=count, nbytes=nbytes, nkeys=3)
    with pytest.raises(FrameError, match="replayed"):
        receive(receiver, 1, Applied())


def test_a_replay_from_an_earlier_round_is_a_frame_error(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    sender, receiver = pair(src, dst, move_id, writers, stall_timeout_s=5)
    ship(sender, 1, {"a": b"1"}, [])
    (_, old), _ = entries(src, move_id)
    receive(receiver, 1, Applied())
    src.xadd(keys.state_frames(move_id), {"f": old})
    ship(sender, 2, {"a": b"2"}, [])
    with pytest.raises(FrameError, match="replayed"):
        receive(receiver, 2, Applied())


def test_back_pressure_without_a_target_gives_up_with_a_bounded_stream(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, _ = clients
    window = 256 * 1024
    sender, _ = pair(src, src, move_id, writers, stall_timeout_s=1.0, max_inflight=window)
    total = 8 * BATCH
    value = os.urandom(64 * 1024)
    produced = 0

    def frames() -> Iterator[FrameTuple]:
        nonlocal produced
        for i in range(total):
            produced += 1
            yield 1, PUT, f"k{i}", 0, 1, value

    with pytest.raises(StateTransferError, match="applied nothing") as info:
        sender.send(frames())
    assert not isinstance(info.value, FrameError)
    assert produced < total  # it stopped taking frames

    stream = entries(src, move_id)
    frame_size = max(len(blob) for _, blob in stream)
    assert 0 < len(stream) < total
    assert len(stream) * frame_size <= window + BATCH * frame_size
    assert sender.sent_bytes == sum(len(blob) for _, blob in stream)


def test_back_pressure_with_a_target_moves_everything_through_a_small_window(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter], pool: ThreadPoolExecutor) -> None:
    src, dst = clients
    window = 256 * 1024
    sender, receiver = pair(src, dst, move_id, writers, max_inflight=window)
    puts = {f"k{i}": os.urandom(64 * 1024) for i in range(6 * BATCH)}
    applied = Applied()
    restoring: Future[dict[str, Any]] = pool.submit(receive, receiver, 1, applied)
    count, _ = ship(sender, 1, puts, [])
    summary = restoring.result(timeout=WAIT_S)
    assert summary["frames"] == count == len(puts)
    assert applied.puts == puts


def test_expire_shortens_the_ttl_of_every_key_of_the_move(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    sender, receiver = pair(src, dst, move_id, writers)
    ship(sender, 1, {"k": b"v"}, [])
    receive(receiver, 1, Applied())
    move_keys = keys.state_keys(move_id)
    assert all(src.exists(k) for k in move_keys)
    assert all(src.ttl(k) > 60 for k in move_keys)  # the channel's own TTL

    channel.expire(src, move_id, 30)
    ttls = [src.ttl(k) for k in move_keys]
    assert all(0 < t <= 30 for t in ttls), ttls


def test_a_sender_without_a_writer_makes_its_own(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    key = new_key()
    sender = Sender(src, move_id, FrameCodec(key, move_id))
    receiver = Receiver(dst, move_id, FrameCodec(key, move_id), stall_timeout_s=WAIT_S)
    try:
        puts = {"a": os.urandom(2 * CHUNK_SIZE), "b": b"b"}
        ship(sender, 1, puts, ["c"])
    finally:
        if sender.writer is not None:
            writers.append(sender.writer)
    applied = Applied()
    try:
        receive(receiver, 1, applied)
    finally:
        receiver.close()
    assert applied.puts == puts


@pytest.fixture
def slash_user(redis_server: RedisServer) -> Iterator[tuple[str, str]]:
    """An ACL user of the shared server whose password holds a ``/`` (as base64 ones do)."""
    name, password = f"t-slash-{uuid.uuid4().hex[:8]}", "pa/ss+wo=rd"
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], commands=["+@all"],
                          keys=["*"])
        yield name, password
    finally:
        admin.acl_deluser(name)
        admin.close()


def test_the_writer_reaches_redis_with_a_password_holding_a_slash(
        redis_server: RedisServer, slash_user: tuple[str, str], move_id: str,
        writers: list[RespWriter]) -> None:
    user, password = slash_user
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, username=user,
                         password=password)
    try:
        assert client.ping()  # redis-py itself gets in
        sender = Sender(client, move_id, FrameCodec(new_key(), move_id))
        try:
            count, nbytes = sender.send([(1, PUT, "k", 0, 1, b"v")])
            assert (count, nbytes) == (1, len(entries(client, move_id)[0][1]))
        finally:
            if sender.writer is not None:
                writers.append(sender.writer)
    finally:
        client.close()


def test_a_writer_refused_by_redis_closes_its_socket(redis_server: RedisServer) -> None:
    bad = redis_server.url.replace(redis_server.password, "wrong-password")
    with pytest.raises(StateTransferError, match="WRONGPASS") as info:
        RespWriter(bad)
    # the half-built writer is still reachable through the traceback: was its socket closed?
    tb: types.TracebackType | None = info.value.__traceback__
    sock = None
    while tb is not None:
        if tb.tb_frame.f_code is RespWriter.__init__.__code__:
            sock = tb.tb_frame.f_locals["self"].sock
        tb = tb.tb_next
    assert sock is not None
    try:
        assert sock.fileno() == -1, "the refused writer's socket is still open"
    finally:
        sock.close()


def test_rounds_already_in_the_stream_arrive_each_in_its_own_round(
        clients: tuple[redis.Redis, redis.Redis], move_id: str,
        writers: list[RespWriter]) -> None:
    src, dst = clients
    sender, receiver = pair(src, dst, move_id, writers)
    # three rounds, written before the target reads anything: its read-ahead (a batch past
    # the one it applies) crosses round 1's END into round 2, and round 2's into round 3
    rounds = {rnd: {f"r{rnd}-k{i}": os.urandom(CHUNK_SIZE if i % 2 else 100)
                    for i in range(channel.READ_COUNT + 7 * rnd)} for rnd in (1, 2, 3)}
    counts = {rnd: ship(sender, rnd, puts, [f"gone-{rnd}"], version=rnd * 10)[0]
              for rnd, puts in rounds.items()}
    try:
        for rnd, puts in rounds.items():
            applied = Applied()
            summary = receive(receiver, rnd, applied)
            assert summary["round"] == rnd and summary["frames"] == counts[rnd]
            assert applied.puts == puts
            assert applied.order[-1] == (DELETE, f"gone-{rnd}")
        assert receiver.sequencer.expected == sender.seq + 1
        # a round returns acknowledged: the stream consumed, every byte counted
        assert dst.xlen(keys.state_frames(move_id)) == 0
        assert int(cast(bytes, dst.get(keys.state_acked(move_id)))) == sender.sent_bytes
    finally:
        receiver.close()
