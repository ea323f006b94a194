"""counter: a UDP session counter that keeps its state when the platform moves it.

Each client session counts its requests. A request is ``(session: u32, seq: u64)`` in network
byte order (``!IQ``); the reply is ``(session, seq, counter)`` (``!IQQ``). A session's requests
are applied in order and once each: the next ``seq`` increments the counter, a ``seq`` already
applied (a client's retransmission) is answered again from the state without counting it
twice, and a ``seq`` further ahead is dropped (the client retransmits it later). So, as long as
no state is lost, every reply's counter equals its ``seq``.

The counters live in the state SDK's ``StateStore``; a ``LocalAgent`` serves it on a local
socket, through which the platform's relay copies it to the new instance during a move. The app
never holds the move's key nor any Redis credential: it only answers on that socket.

Environment: ``PORT`` (or ``--port``; 7000), ``STATE_SOCKET`` (``/run/mobility/state.sock``),
``RESTORE=1`` when this instance is the target of a move. The platform sets the last two as
``MOBILITY_STATE_SOCKET`` and ``MOBILITY_RESTORE``; both spellings are read.
"""

import argparse
import collections
import logging
import os
import signal
import socket
import struct
import sys

from state_transfer.local import LocalAgent
from state_transfer.states import StoreState
from state_transfer.store import StateStore

REQUEST = struct.Struct("!IQ")  # session, seq
REPLY = struct.Struct("!IQQ")  # session, seq, counter
log = logging.getLogger("counter")


def env(name: str, default: str) -> str:
    """``MOBILITY_<name>`` (as the platform sets it), else ``<name>``, else ``default``."""
    return os.environ.get(f"MOBILITY_{name}") or os.environ.get(name) or default


def count(store: StateStore, session: int, seq: int) -> int | None:
    """The counter to answer ``(session, seq)`` with, or None to drop the request."""
    applied, counter = store.get(f"s:{session}", (0, 0))  # last seq applied, its counter
    if seq <= applied:  # a retransmission: answer from the state, count nothing
        return int(counter - (applied - seq))
    if seq != applied + 1:  # ahead of the session's order: the client will send it again
        return None
    # A write: the store stamps it with a new version, so the next copy round ships it.
    store.set(f"s:{session}", (seq, counter + 1))
    return int(counter + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description="UDP session counter")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7000")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s counter: %(message)s")

    store = StateStore()
    restoring = env("RESTORE", "") == "1"
    if restoring:
        # The target of a move starts empty, and frozen: it answers nothing until the platform
        # has copied the whole state over and resumes it, so no reply comes from half of it.
        store.freeze()
    # The SDK socket comes up first: the platform's relay may ask for the state as soon as the
    # app is ready, and the app is ready once it listens on its UDP port (below).
    agent = LocalAgent(StoreState(store), socket_path=env("STATE_SOCKET",
                                                          "/run/mobility/state.sock"))
    agent.start()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    sock.settimeout(0.05)  # wake up now and then to serve what waited out a freeze
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("listening on udp/%d%s", args.port, " (restoring)" if restoring else "")

    # While the platform has the state frozen (the last copy round of a move), requests wait
    # here rather than being dropped, and are answered on resume. If this instance is released
    # instead, their clients retransmit them to the new one.
    held: collections.deque[tuple[bytes, tuple[str, int]]] = collections.deque(maxlen=100_000)
    try:
        while True:
            try:
                data, peer = sock.recvfrom(64)
                if len(data) >= REQUEST.size:
                    held.append((data, peer))
            except TimeoutError:
                pass
            while held and not store.frozen:
                data, peer = held.popleft()
                session, seq = REQUEST.unpack_from(data)
                counter = count(store, session, seq)
                if counter is not None:
                    sock.sendto(REPLY.pack(session, seq, counter), peer)
    finally:
        agent.stop()


if __name__ == "__main__":
    raise SystemExit(main())
