"""Client of the session service: many sessions, sequenced requests, retransmission.

Usage: python -m dataplane.lab.workloads.session_probe --target IP:PORT --rate 1000
       --sessions 16 --out PATH [--progress PATH] [--ready-file PATH] [--rto-ms 30]

Sends ``rate`` new requests per second round-robin over the sessions and retransmits a request
unanswered after ``rto`` (as any UDP client must). On SIGTERM it stops sending new requests,
keeps retransmitting for ``--grace`` seconds, then writes one JSON object: ``sent`` (distinct
requests), ``answered``, ``lost`` (never answered), ``retransmits``, ``counters_ok`` (every
reply's counter equals its sequence number: no reset, gap or double increment) and the
violations seen, if any.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import socket
import struct
import threading
import time

from dataplane.lab.workloads import pausing
from dataplane.lab.workloads.files import mark_ready, write_json

REQUEST = struct.Struct("!IQ")
REPLY = struct.Struct("!IQQ")


class SessionProbe:
    def __init__(self, target: tuple[str, int], *, rate: float, sessions: int,
                 rto: float) -> None:
        self.target = target
        self.interval = 1.0 / rate
        base = random.Random().randrange(1, 2**31)
        self.sessions = [base + i for i in range(sessions)]
        self.next_seq = dict.fromkeys(self.sessions, 1)
        self.rto = rto
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.settimeout(0.02)
        self.lock = threading.Lock()
        self.outstanding: dict[tuple[int, int], float] = {}
        self.sent = self.answered = self.retransmits = self.duplicate_replies = 0
        self.violations: list[dict[str, int]] = []
        self.resets = self.doubles = 0
        self.last_reply = 0.0
        self.max_gap = 0.0
        self.new_requests = threading.Event()
        self.new_requests.set()
        self.stop = threading.Event()

    def send_loop(self) -> None:
        next_at = time.monotonic()
        turn = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if not self.new_requests.is_set():
                next_at = now  # paused: resume at the rate, without a burst to catch up
            with self.lock:
                late = [k for k, t in self.outstanding.items() if now - t > self.rto]
                for key in late[:64]:
                    self.outstanding[key] = now
                    self.retransmits += 1
                    self._send(*key)
            if self.new_requests.is_set() and now >= next_at:
                session = self.sessions[turn % len(self.sessions)]
                turn += 1
                with self.lock:
                    seq = self.next_seq[session]
                    self.next_seq[session] = seq + 1
                    self.outstanding[(session, seq)] = now
                    self.sent += 1
                    self._send(session, seq)
                next_at += self.interval
            else:
                time.sleep(min(max(next_at - now, 0.0), 0.002))

    def _send(self, session: int, seq: int) -> None:
        # a failed send stays outstanding and is retransmitted
        with contextlib.suppress(OSError):
            self.sock.sendto(REQUEST.pack(session, seq), self.target)

    def receive_loop(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(64)
            except (TimeoutError, OSError):
                continue
            if len(data) < REPLY.size:
                continue
            session, seq, counter = REPLY.unpack_from(data)
            now = time.monotonic()
            with self.lock:
                if self.outstanding.pop((session, seq), None) is None:
                    self.duplicate_replies += 1
                    continue
                self.answered += 1
                if counter != seq:
                    if counter < seq:
                        self.resets += 1  # state lost or a request skipped
                    else:
                        self.doubles += 1  # a request applied twice
                    if len(self.violations) < 20:
                        self.violations.append({"session": session, "seq": seq,
                                                "counter": counter})
                if self.last_reply:
                    self.max_gap = max(self.max_gap, now - self.last_reply)
                self.last_reply = now

    def summary(self) -> dict[str, object]:
        with self.lock:
            return {
                "target": f"{self.target[0]}:{self.target[1]}",
                "sessions": len(self.sessions),
                "sent": self.sent,
                "answered": self.answered,
                "lost": len(self.outstanding),
                "retransmits": self.retransmits,
                "duplicate_replies": self.duplicate_replies,
                "counters_ok": self.resets + self.doubles == 0,
                "resets_or_gaps": self.resets,
                "double_increments": self.doubles,
                "violation_examples": list(self.violations),
                "max_gap_ms": round(self.max_gap * 1000, 2),
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--rto-ms", type=float, default=100.0)
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--progress")
    parser.add_argument("--ready-file")
    pausing.add_arguments(parser)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    probe = SessionProbe((host, int(port)), rate=args.rate, sessions=args.sessions,
                         rto=args.rto_ms / 1000.0)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    # paused: no new requests, while outstanding ones are retransmitted until answered
    pause = pausing.PauseControl(probe.new_requests, args)
    threads = [threading.Thread(target=probe.send_loop, daemon=True),
               threading.Thread(target=probe.receive_loop, daemon=True)]
    for t in threads:
        t.start()
    mark_ready(args.ready_file)
    while not done.wait(pause.poll_s):
        pause.settle(in_flight=lambda: bool(probe.summary()["lost"]), summary=probe.summary,
                     timeout=1.5)
        if args.progress:
            write_json(args.progress, probe.summary())
    probe.new_requests.clear()
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline and probe.summary()["lost"]:
        time.sleep(0.02)
    probe.stop.set()
    for t in threads:
        t.join()
    result = probe.summary()
    write_json(args.out, result)
    if args.progress:
        write_json(args.progress, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
