"""One Redis stream per move: the source appends sealed frames, the target reads and applies.

Memory is bounded: the source stops appending while more than ``max_inflight`` bytes are
unapplied (the target adds what it applied to ``mob:state:<move>:acked`` and deletes the
entries it consumed). Every key of a move carries a TTL from its first write, and
:func:`expire` shortens it once the move ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import msgpack

from state_transfer import keys
from state_transfer.errors import FrameError, StateTransferError
from state_transfer.frames import END, PUT, Frame, FrameCodec, Reassembler, Sequencer
from state_transfer.resp import Arg, RespWriter

if TYPE_CHECKING:  # redis-py takes a third of a second to import: only when a move needs it
    import redis

log = logging.getLogger(__name__)

MAX_INFLIGHT = 64 * 1024 * 1024
BATCH = 64
TTL_S = 3600
READ_COUNT = 128  # entries an XREAD asks for: 8 MiB of 64 KiB frames
BLOCK_MS = 200


class Sender:
    """The source side of one move's channel; keeps the sequence across rounds."""

    def __init__(self, client: redis.Redis, move_id: str, codec: FrameCodec, *,
                 max_inflight: int = MAX_INFLIGHT, stall_timeout_s: float = 30.0,
                 ttl_s: int = TTL_S, writer: RespWriter | None = None) -> None:
        self.r = client
        self.writer = writer  # the fast path for appending frames, when given
        self.move_id = move_id
        self.codec = codec
        self.max_inflight = max_inflight
        self.stall_timeout_s = stall_timeout_s
        self.ttl_s = ttl_s
        self.seq = 0
        self.sent_bytes = 0
        self.corrupt_seq: int | None = None  # fault injection: flip a byte of this frame

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _acked(self) -> int:
        raw = self.r.get(keys.state_acked(self.move_id))
        return int(cast(bytes, raw)) if raw else 0

    def _wait_room(self) -> None:
        if self.sent_bytes <= self.max_inflight:
            return  # cannot be over the cap yet: no need to ask Redis
        if self.sent_bytes - self._acked() <= self.max_inflight:
            return
        deadline = time.monotonic() + self.stall_timeout_s
        while self.sent_bytes - self._acked() > self.max_inflight:
            if time.monotonic() > deadline:
                raise StateTransferError(
                    f"move {self.move_id}: the target applied nothing for "
                    f"{self.stall_timeout_s:g} s; giving up")
            time.sleep(0.002)

    def send(self, frames: Iterable[tuple[int, str, str, int, int, bytes]]) -> tuple[int, int]:
        """Append ``(round, kind, key, chunk, count, payload)`` frames; returns (frames, bytes)."""
        stream = keys.state_frames(self.move_id)
        if self.writer is None:
            self.writer = RespWriter.from_client(self.r)
        name = stream.encode()
        count = nbytes = 0
        batch: list[list[Arg]] = []
        for rnd, kind, key, chunk, total, payload in frames:
            self.seq += 1
            head, sealed = self.codec.seal_parts(Frame(seq=self.seq, round=rnd, kind=kind,
                                                       key=key, chunk=chunk, count=total,
                                                       payload=payload))
            if self.corrupt_seq == self.seq:
                sealed = sealed[:-1] + bytes([sealed[-1] ^ 0x01])
            # header and payload go as one field, written from where they are (no join)
            batch.append([b"XADD", name, b"*", b"f", (head, sealed)])
            count += 1
            size = len(head) + len(sealed)
            nbytes += size
            self.sent_bytes += size
            if len(batch) >= BATCH:
                batch.append([b"EXPIRE", name, str(self.ttl_s).encode()])
                # one batch in flight: Redis works on this one while we read the last replies
                self.writer.send(batch)
                self.writer.drain(leave=len(batch))
                batch = []
                self._wait_room()
        if batch:
            batch.append([b"EXPIRE", name, str(self.ttl_s).encode()])
            self.writer.send(batch)
        self.writer.drain()
        return count, nbytes


class Receiver:
    """The target side: checks every frame's tag and sequence, applies, acknowledges.

    It reads through a :class:`RespWriter` of its own, one XREAD ahead: the next batch is
    asked for (without blocking) before this one is opened and applied, so Redis writes it
    out while this side decrypts, and a batch's acknowledgement (XDEL, INCRBY) goes out
    without waiting for its replies, which are read behind the next XREAD's. A batch read
    ahead past a round's END frame is the next round's: kept, unacknowledged, for it. A
    round returns once Redis has answered everything asked in it: its frames are deleted and
    counted as applied by then.
    """

    def __init__(self, client: redis.Redis, move_id: str, codec: FrameCodec, *,
                 stall_timeout_s: float = 30.0, ttl_s: int = TTL_S,
                 reader: RespWriter | None = None) -> None:
        self.r = client
        self.conn = reader
        self.move_id = move_id
        self.codec = codec
        self.stall_timeout_s = stall_timeout_s
        self.ttl_s = ttl_s
        self.last_id = "0"  # of the last entry applied
        self.sequencer = Sequencer()
        self._fetched = b"0"  # of the last entry read from Redis
        self._owed: list[str] = []  # the kinds of the replies owed, in order: xread, ack
        self._carry: list[Any] = []  # entries read but not applied (the next round's)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _writer(self) -> RespWriter:
        if self.conn is None:
            self.conn = RespWriter.from_client(self.r)
        return self.conn

    def _ask(self, *, block: bool) -> None:
        args: list[Arg] = [b"XREAD", b"COUNT", b"%d" % READ_COUNT]
        if block:
            args += [b"BLOCK", b"%d" % BLOCK_MS]
        args += [b"STREAMS", keys.state_frames(self.move_id).encode(), self._fetched]
        self._writer().send([args])
        self._owed.append("block" if block else "xread")

    def _reply(self) -> tuple[str, Any]:
        """The next reply owed, with its kind; acknowledgements' replies are passed over."""
        w = self._writer()
        while True:
            kind = self._owed.pop(0)
            reply = w.take()
            if kind != "ack":
                return kind, reply

    def _entries(self) -> list[Any]:
        """The next entries to apply (empty after a blocking read found none)."""
        if self._carry:
            entries, self._carry = self._carry, []
            return entries
        if "xread" not in self._owed and "block" not in self._owed:
            self._ask(block=True)
        kind, reply = self._reply()
        if not reply and kind == "xread":
            self._ask(block=True)
            kind, reply = self._reply()
        if not reply:
            return []
        entries = cast(list[Any], reply[0][1])
        self._fetched = entries[-1][0]
        return entries

    def _ack(self, ids: list[bytes], size: int) -> None:
        stream = keys.state_frames(self.move_id).encode()
        acked = keys.state_acked(self.move_id).encode()
        self._writer().send([[b"XDEL", stream, *ids], [b"INCRBY", acked, b"%d" % size],
                             [b"EXPIRE", acked, b"%d" % self.ttl_s]])
        self._owed += ["ack"] * 3

    def receive_round(self, rnd: int, *, put: Callable[[str, bytes], None],
                      delete: Callable[[str], None]) -> dict[str, Any]:
        """Apply frames until the END frame of round ``rnd``; returns the round's summary."""
        reasm = Reassembler()
        frames = nbytes = 0
        idle_since = time.monotonic()
        while True:
            entries = self._entries()
            if not entries:
                if time.monotonic() - idle_since > self.stall_timeout_s:
                    raise StateTransferError(f"move {self.move_id}: no frame for "
                                             f"{self.stall_timeout_s:g} s in round {rnd}")
                continue
            idle_since = time.monotonic()
            if not self._carry:
                self._ask(block=False)  # the next batch, while this one is applied
            ids, size, summary = [], 0, None
            for n, (entry_id, fields) in enumerate(entries):
                blob = _field(fields)
                frame = self.codec.open(blob)
                self.sequencer.check(frame)
                if frame.round != rnd:
                    raise FrameError(f"frame {frame.seq} belongs to round {frame.round}, "
                                     f"expected {rnd}")
                frames += 1
                nbytes += len(blob)
                size += len(blob)
                ids.append(entry_id)
                self.last_id = entry_id.decode()
                if frame.kind == PUT:
                    value = reasm.add(frame)
                    if value is not None:
                        put(frame.key, value)
                elif frame.kind == END:
                    summary = self._end(frame, reasm, frames, nbytes)
                    self._carry = list(entries[n + 1 :])
                    break
                else:
                    delete(frame.key)
            self._ack(ids, size)
            if summary is not None:
                self._settle()
                return summary

    def _settle(self) -> None:
        """Read every reply owed; entries a read ahead found (the next round's) are kept."""
        w = self._writer()
        while self._owed:
            kind = self._owed.pop(0)
            reply = w.take()
            if kind != "ack" and reply:
                self._carry += reply[0][1]
                self._fetched = self._carry[-1][0]

    @staticmethod
    def _end(frame: Frame, reasm: Reassembler, frames: int, nbytes: int) -> dict[str, Any]:
        summary: dict[str, Any] = msgpack.unpackb(frame.payload, raw=False)
        if reasm.pending:
            raise FrameError(f"round {frame.round} ended inside a chunked value")
        if summary.get("frames") != frames - 1:
            raise FrameError(f"round {frame.round}: {frames - 1} frames arrived, the source "
                             f"sent {summary.get('frames')}")
        summary["received_bytes"] = nbytes
        return summary


def _field(fields: Any) -> bytes:
    """The frame of an entry: its one field ``f`` (a flat [name, value] list in RESP2)."""
    if isinstance(fields, list) and len(fields) == 2 and fields[0] == b"f":
        return cast(bytes, fields[1])
    raise FrameError("a stream entry without its frame field")


def expire(client: redis.Redis, move_id: str, ttl_s: int) -> None:
    """Shorten the life of every key of the move's transfer (called when the move ends)."""
    pipe = client.pipeline(transaction=False)
    for key in keys.state_keys(move_id):
        pipe.expire(key, ttl_s)
    pipe.execute()
