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
from state_transfer.resp import RespWriter

if TYPE_CHECKING:  # redis-py takes a third of a second to import: only when a move needs it
    import redis

log = logging.getLogger(__name__)

MAX_INFLIGHT = 64 * 1024 * 1024
BATCH = 64
TTL_S = 3600


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
        batch: list[list[bytes]] = []
        for rnd, kind, key, chunk, total, payload in frames:
            self.seq += 1
            blob = self.codec.seal(Frame(seq=self.seq, round=rnd, kind=kind, key=key,
                                         chunk=chunk, count=total, payload=payload))
            if self.corrupt_seq == self.seq:
                blob = blob[:-1] + bytes([blob[-1] ^ 0x01])
            batch.append([b"XADD", name, b"*", b"f", blob])
            count += 1
            nbytes += len(blob)
            self.sent_bytes += len(blob)
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
    """The target side: checks every frame's tag and sequence, applies, acknowledges."""

    def __init__(self, client: redis.Redis, move_id: str, codec: FrameCodec, *,
                 stall_timeout_s: float = 30.0, ttl_s: int = TTL_S) -> None:
        self.r = client
        self.move_id = move_id
        self.codec = codec
        self.stall_timeout_s = stall_timeout_s
        self.ttl_s = ttl_s
        self.last_id = "0"
        self.sequencer = Sequencer()

    def receive_round(self, rnd: int, *, put: Callable[[str, bytes], None],
                      delete: Callable[[str], None]) -> dict[str, Any]:
        """Apply frames until the END frame of round ``rnd``; returns the round's summary."""
        stream = keys.state_frames(self.move_id)
        acked = keys.state_acked(self.move_id)
        reasm = Reassembler()
        frames = nbytes = 0
        idle_since = time.monotonic()
        while True:
            rows = cast(list[Any], self.r.xread({stream: self.last_id}, count=128, block=200))
            if not rows:
                if time.monotonic() - idle_since > self.stall_timeout_s:
                    raise StateTransferError(f"move {self.move_id}: no frame for "
                                             f"{self.stall_timeout_s:g} s in round {rnd}")
                continue
            idle_since = time.monotonic()
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], rows[0][1])
            ids, size, summary = [], 0, None
            for entry_id, fields in entries:
                blob = fields[b"f"]
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
                    break
                else:
                    delete(frame.key)
            pipe = self.r.pipeline(transaction=False)
            pipe.xdel(stream, *ids)
            pipe.incrby(acked, size)
            pipe.expire(acked, self.ttl_s)
            pipe.execute()
            if summary is not None:
                return summary

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


def expire(client: redis.Redis, move_id: str, ttl_s: int) -> None:
    """Shorten the life of every key of the move's transfer (called when the move ends)."""
    pipe = client.pipeline(transaction=False)
    for key in keys.state_keys(move_id):
        pipe.expire(key, ttl_s)
    pipe.execute()
