"""The plain Redis paths a state transfer is measured against, run from the lab's nodes.

A move's state goes as one encrypted stream: the source's agent appends 64 KiB frames to the
move's Redis stream (pipelined, 64 commands a batch, through ``state_transfer.resp``), while
the target's agent reads them concurrently, acknowledges what it applied, and the source
holds back past ``MAX_INFLIGHT`` unacknowledged bytes; both reach Redis over the lab's host
link. The baselines here take the same paths without the agents and without the encryption:

- ``set``: one client SETting values of the state's size, pipelined as the channel pipelines;
- ``get``: one client GETting them back the same way;
- ``stream``: a writer appending the same bytes, in values of the same size, to a stream laid
  out as the channel's (``state_transfer.keys``), with a concurrent reader that deletes and
  acknowledges what it read, the writer held back at the same in-flight cap.

Each side runs as ``python -m bench.baselines ROLE`` inside a node's network namespace
(``nsenter --net``, as the node agents run), so it crosses the same links as the agents.
:func:`measure` runs all three between two nodes and returns MB/s. Timings are taken with
``time.monotonic`` in each process: one clock for the whole host, whatever the namespace.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

from bench.children import Child
from mobility import keys as mobility_keys
from state_transfer import keys
from state_transfer.channel import BATCH, MAX_INFLIGHT
from state_transfer.resp import RespWriter

log = logging.getLogger("bench.baselines")

# The one key SET and GET use (overwritten each time, so the baseline holds one value in
# Redis), from the project's key module.
SET_KEY = mobility_keys.BENCH_VALUE


def _pipelined(writer: RespWriter, commands: Sequence[Sequence[bytes]]) -> list[Any]:
    """Send ``commands`` in batches of the channel's size, one batch in flight, as the
    channel's sender does; returns every reply."""
    replies: list[Any] = []
    for i in range(0, len(commands), BATCH):
        batch = commands[i:i + BATCH]
        writer.send(batch)
        replies.extend(writer.drain(leave=len(batch)))
    replies.extend(writer.drain())
    return replies


def run_set(url: str, *, count: int, size: int) -> dict[str, float]:
    writer = RespWriter(url)
    value = os.urandom(size)
    t0 = time.monotonic()
    _pipelined(writer, [[b"SET", SET_KEY.encode(), value]] * count)
    t1 = time.monotonic()
    writer.close()
    return {"start_t": t0, "end_t": t1, "bytes": count * size}


def run_get(url: str, *, count: int) -> dict[str, float]:
    writer = RespWriter(url)
    t0 = time.monotonic()
    replies = _pipelined(writer, [[b"GET", SET_KEY.encode()]] * count)
    t1 = time.monotonic()
    writer.close()
    return {"start_t": t0, "end_t": t1, "bytes": sum(len(r or b"") for r in replies)}


def run_stream_write(url: str, *, name: str, count: int, size: int) -> dict[str, float]:
    """Append ``count`` values of ``size`` bytes to the stream, at most ``MAX_INFLIGHT``
    bytes ahead of the reader's acknowledgements (the channel's back-pressure)."""
    import redis

    r = redis.Redis.from_url(url)
    writer = RespWriter(url)
    stream, acked = keys.state_frames(name).encode(), keys.state_acked(name)
    value = os.urandom(size)
    sent = 0
    t0 = time.monotonic()
    for i in range(0, count, BATCH):
        n = min(BATCH, count - i)
        writer.send([[b"XADD", stream, b"*", b"f", value]] * n)
        writer.drain(leave=n)
        sent += n * size
        while sent > MAX_INFLIGHT and sent - int(cast(bytes, r.get(acked) or b"0")) > (
                MAX_INFLIGHT):
            time.sleep(0.002)  # the channel's sender polls the same counter the same way
    writer.drain()
    t1 = time.monotonic()
    writer.close()
    return {"start_t": t0, "end_t": t1, "bytes": sent}


def run_stream_read(url: str, *, name: str, nbytes: int, timeout: float) -> dict[str, float]:
    """Read until ``nbytes`` arrived, deleting and acknowledging each batch (as the
    channel's receiver does); reports when the first and the last entry arrived."""
    import redis

    r = redis.Redis.from_url(url)
    stream, acked = keys.state_frames(name), keys.state_acked(name)
    r.ping()
    _report({"ready": True})
    last_id, got, first_t = "0", 0, 0.0
    deadline = time.monotonic() + timeout
    while got < nbytes:
        if time.monotonic() > deadline:
            raise SystemExit(f"stream baseline: {got} of {nbytes} bytes in {timeout:g} s")
        rows = cast(list[Any], r.xread({stream: last_id}, count=128, block=200))
        if not rows:
            continue
        if not first_t:
            first_t = time.monotonic()
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], rows[0][1])
        size = sum(len(fields[b"f"]) for _, fields in entries)
        got += size
        last_id = entries[-1][0].decode()
        pipe = r.pipeline(transaction=False)
        pipe.xdel(stream, *[e for e, _ in entries])
        pipe.incrby(acked, size)
        pipe.execute()
    end_t = time.monotonic()
    r.delete(stream, acked)
    return {"first_t": first_t, "end_t": end_t, "bytes": got}


def _report(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("set", "get", "stream-write", "stream-read"))
    parser.add_argument("--count", type=int, required=True, help="values to send")
    parser.add_argument("--size", type=int, required=True, help="bytes per value")
    parser.add_argument("--name", default="", help="the stream's move id (stream roles)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    # the URL (with its password) comes on stdin, never on a command line
    url = sys.stdin.readline().strip()
    if args.role == "set":
        result = run_set(url, count=args.count, size=args.size)
    elif args.role == "get":
        result = run_get(url, count=args.count)
    elif args.role == "stream-write":
        result = run_stream_write(url, name=args.name, count=args.count, size=args.size)
    else:
        result = run_stream_read(url, name=args.name, nbytes=args.count * args.size,
                                 timeout=args.timeout)
    _report(result)
    return 0


# --- the orchestrating side, in the bench's own process ---


def _start(namespace: str, url: str, role: str, *extra: str) -> Child:
    child = Child(namespace, "bench.baselines", role, *extra)
    child.send(url)  # the URL carries the password: on stdin, never on a command line
    child.close_stdin()
    return child


def _mb_s(nbytes: float, seconds: float) -> float:
    return round(nbytes / 1e6 / seconds, 1) if seconds > 0 else 0.0


def measure(*, url: str, local_url: str, writer_ns: str, reader_ns: str, count: int,
            size: int, timeout: float = 300.0) -> dict[str, float]:
    """SET from ``writer_ns``, GET from ``reader_ns``, and the stream from one to the other;
    MB/s of each (payload bytes over the time from the first command to the last reply).

    ``url`` is Redis as the nodes reach it, ``local_url`` as this process does (to remove
    the baseline's keys whatever happens)."""
    import redis

    sizes = ("--count", str(count), "--size", str(size))
    put = _start(writer_ns, url, "set", *sizes).finish(timeout)
    got = _start(reader_ns, url, "get", *sizes).finish(timeout)
    name = f"bench-{secrets.token_hex(4)}"
    reader = _start(reader_ns, url, "stream-read", *sizes, "--name", name,
                    "--timeout", str(timeout))
    try:
        reader.next(30)  # ready: connected, reading
        written = _start(writer_ns, url, "stream-write", *sizes, "--name", name).finish(timeout)
        read = reader.finish(timeout)
    finally:
        reader.kill()
        redis.Redis.from_url(local_url).delete(SET_KEY, keys.state_frames(name),
                                               keys.state_acked(name))
    return {
        "set_mb_s": _mb_s(put["bytes"], put["end_t"] - put["start_t"]),
        "get_mb_s": _mb_s(got["bytes"], got["end_t"] - got["start_t"]),
        # from the writer's first append to the reader's last entry: the transfer as the
        # target sees it, as a move's round is timed
        "stream_mb_s": _mb_s(read["bytes"], read["end_t"] - written["start_t"]),
    }


if __name__ == "__main__":
    raise SystemExit(main())
