"""Reference stateful workload: a UDP session service built on the state_transfer SDK.

Usage: python -m dataplane.lab.workloads.sessions --port 7000 --control SOCK
       [--state-mb N] [--dirty-rate PCT] [--ready-file PATH]

A request is ``(session: u32, seq: u64)``; the reply is ``(session, seq, counter)``. The
service applies a session's requests in order, once each: ``seq`` one past the last applied
increments the counter; a ``seq`` already applied is answered again from the state (a client's
retransmission, never a second increment); a ``seq`` further ahead is dropped until the ones
before it arrive. So a reply's counter equals its ``seq`` exactly when no state was lost
(reset), skipped (gap) or applied twice (double increment).

``--state-mb`` adds that much extra state in 64 KiB values, ``--dirty-rate`` rewrites that
percentage of those values per second. While the agent has the store frozen, requests wait
in a queue; they are served on resume, or, when the instance is released after a cutover,
answered by the new instance when the client retransmits.

``--control`` is the socket of the SDK's in-container half, a
:class:`~state_transfer.local.LocalAgent` speaking the local protocol: the process holds
neither the move's key nor Redis credentials (it imports neither cryptography nor redis); a
relay outside it (``python -m state_transfer.relay``) serves the orchestrator's protocol.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

from dataplane.lab.workloads.files import mark_ready
from state_transfer.local import LocalAgent
from state_transfer.states import StoreState
from state_transfer.store import StateStore

REQUEST = struct.Struct("!IQ")
REPLY = struct.Struct("!IQQ")
BLOB = 64 * 1024


class SessionService:
    """Applies each session's requests once and in order.

    A request ahead of its session's order waits (not in the state: if the instance goes away,
    the client retransmits it) until the ones before it arrive, instead of being dropped, so one
    late packet does not make the client retransmit everything behind it.
    """

    MAX_WAITING = 1024  # per session

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.waiting: dict[int, dict[int, tuple[str, int]]] = {}

    def handle(self, session: int, seq: int, peer: tuple[str, int]) -> list[tuple[
            tuple[str, int], int, int]]:
        """Replies to send: (peer, seq, counter) for this request and any it unblocked."""
        key = f"s:{session}"
        applied, counter = self.store.get(key, (0, 0))
        if seq <= applied:
            return [(peer, seq, int(counter - (applied - seq)))]
        if seq != applied + 1:
            waiting = self.waiting.setdefault(session, {})
            if len(waiting) < self.MAX_WAITING:
                waiting[seq] = peer
            return []
        replies = []
        waiting = self.waiting.get(session, {})
        while True:
            applied, counter = seq, counter + 1
            replies.append((peer, seq, counter))
            nxt = waiting.pop(seq + 1, None)
            if nxt is None:
                break
            seq, peer = seq + 1, nxt
        # set() waits while frozen; the caller never gets here frozen (see main()).
        self.store.set(key, (applied, counter))
        return replies


POOL = 16 * 1024 * 1024  # random bytes the initial values are cut from


class Values:
    """Values of :data:`BLOB` bytes, each different and incompressible, made at the speed of
    a copy: a serial number and a slice of one pool of random bytes. Drawing each from
    ``os.urandom`` took some 4 s a GiB (the service is not ready until its state is), and at
    1 % a second of 4 GiB, the dirtying alone took a tenth of a CPU from the transfer."""

    STEP = 4093 * 8  # odd multiple of 8: consecutive values start at different offsets

    def __init__(self) -> None:
        self._pool = memoryview(os.urandom(POOL + BLOB))
        self._serial = 0

    def next(self) -> bytes:
        n, self._serial = self._serial, self._serial + 1
        at = (n * self.STEP) % POOL
        return n.to_bytes(8, "big") + self._pool[at : at + BLOB - 8]


def fill(store: StateStore, blobs: int, values: Values | None = None) -> Values:
    """``blobs`` values (see :class:`Values`); returns the maker, to go on with."""
    values = values or Values()
    for i in range(blobs):
        store.set(f"blob:{i:06d}", values.next())
    return values


def dirty_loop(store: StateStore, blobs: int, rate_pct: float,
               values: Values | None = None) -> None:
    if blobs == 0 or rate_pct <= 0:
        return
    values = values or Values()
    per_s = blobs * rate_pct / 100.0
    interval = 0.01
    credit = 0.0
    rng = random.Random()
    while True:
        time.sleep(interval)
        credit += per_s * interval
        while credit >= 1:
            credit -= 1
            store.set(f"blob:{rng.randrange(blobs):06d}", values.next())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--control", required=True,
                        help="Unix socket of the local state agent (its relay's --app)")
    parser.add_argument("--state-mb", type=float, default=0.0)
    parser.add_argument("--dirty-rate", type=float, default=0.0)
    parser.add_argument("--ready-file")
    parser.add_argument("--restore", action="store_true",
                        help="start empty: the state arrives from a move")
    args = parser.parse_args(argv)
    # On Kubernetes the command line is the service's, the same for every instance; what is
    # an instance's own (a move's target restores) comes as its MOBILITY_PARAM_* variables.
    restore = args.restore or os.environ.get("MOBILITY_PARAM_RESTORE") in ("1", "True", "true")

    store = StateStore()
    blobs = int(args.state_mb * 1024 * 1024 // BLOB)
    values = Values()
    if not restore:
        started = time.monotonic()
        fill(store, blobs, values)
        print(f"sessions: {blobs} values of {BLOB} bytes made in "
              f"{time.monotonic() - started:.2f} s", file=sys.stderr, flush=True)
    agent = LocalAgent(StoreState(store), socket_path=args.control,
                       faults_allowed=os.environ.get("MOBILITY_FAULT_INJECTION") == "1")
    agent.start()
    service = SessionService(store)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", args.port))
    sock.settimeout(0.05)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=dirty_loop, args=(store, blobs, args.dirty_rate, values),
                     daemon=True).start()
    mark_ready(args.ready_file)

    held: collections.deque[tuple[bytes, tuple[str, int]]] = collections.deque(maxlen=100_000)
    while True:
        try:
            data, peer = sock.recvfrom(64)
        except TimeoutError:
            data, peer = b"", ("", 0)
        if data and len(data) >= REQUEST.size:
            held.append((data, peer))
        if store.frozen:
            continue
        while held:
            req, addr = held.popleft()
            session, seq = REQUEST.unpack_from(req)
            for to, done, counter in service.handle(session, seq, addr):
                sock.sendto(REPLY.pack(session, done, counter), to)


if __name__ == "__main__":
    raise SystemExit(main())
