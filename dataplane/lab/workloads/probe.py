"""Sequenced UDP probe: sends numbered requests at a fixed rate and counts what comes back.

Usage: python -m dataplane.lab.workloads.probe --target IP:PORT --rate 1000 --out PATH
       [--duration S] [--count N] [--progress PATH] [--grace S]

Runs until SIGTERM/SIGINT (or --duration), then stops sending, waits for the replies still in
flight (until every request is answered, at most ``--grace`` seconds) and writes one JSON
object to ``--out``: sent, received (unique), lost, duplicated, the longest silence between two
replies and the round-trip percentiles. A reply is matched by its sequence number, so a request
answered twice counts as duplicated and one never answered as lost.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import struct
import threading
import time

from dataplane.lab.workloads import pausing
from dataplane.lab.workloads.files import mark_ready, write_json

PACKET = struct.Struct("!Qd")


class Probe:
    def __init__(self, target: tuple[str, int], rate: float, count: int = 0) -> None:
        self.target = target
        self.count = count
        self.interval = 1.0 / rate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.settimeout(0.05)
        self.sent = 0
        self.seen = bytearray()
        self.received = 0
        self.duplicated = 0
        self.rtts: list[float] = []
        self.last_reply = 0.0
        self.max_gap = 0.0
        self.first_reply = 0.0
        self.stop_sending = threading.Event()
        self.stop_receiving = threading.Event()
        self.sending = threading.Event()  # cleared while paused (the instance is moving)
        self.sending.set()

    def send_loop(self) -> None:
        next_at = time.monotonic()
        while not self.stop_sending.is_set():
            if self.count and self.sent >= self.count:
                return
            if not self.sending.is_set():
                self.sending.wait(0.05)
                next_at = time.monotonic()
                continue
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.01))
                continue
            # an unreachable target counts as lost, not as a crash
            with contextlib.suppress(OSError):
                self.sock.sendto(PACKET.pack(self.sent, time.monotonic()), self.target)
            self.sent += 1
            next_at += self.interval

    def receive_loop(self) -> None:
        while not self.stop_receiving.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                continue
            if len(data) < PACKET.size:
                continue
            seq, sent_at = PACKET.unpack_from(data)
            now = time.monotonic()
            if seq >= len(self.seen):
                self.seen.extend(b"\0" * (seq + 1 - len(self.seen) + 4096))
            if self.seen[seq]:
                self.duplicated += 1
                continue
            self.seen[seq] = 1
            self.received += 1
            self.rtts.append(now - sent_at)
            if self.last_reply:
                self.max_gap = max(self.max_gap, now - self.last_reply)
            else:
                self.first_reply = now
            self.last_reply = now

    def summary(self) -> dict[str, object]:
        rtts = sorted(self.rtts)

        def pct(p: float) -> float:
            return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1e6, 1) if rtts else 0.0

        return {
            "target": f"{self.target[0]}:{self.target[1]}",
            "sent": self.sent,
            "received": self.received,
            "lost": self.sent - self.received,
            "duplicated": self.duplicated,
            "max_gap_ms": round(self.max_gap * 1000, 2),
            "rtt_us_p50": pct(0.5),
            "rtt_us_p99": pct(0.99),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="IP:PORT of the service")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=0.0, help="0: until SIGTERM")
    parser.add_argument("--count", type=int, default=0, help="stop after this many; 0: no cap")
    parser.add_argument("--grace", type=float, default=0.5)
    parser.add_argument("--out", required=True)
    parser.add_argument("--progress")
    parser.add_argument("--ready-file")
    pausing.add_arguments(parser)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if args.rate <= 0:
        parser.error("--rate must be positive")

    probe = Probe((host, int(port)), args.rate, args.count)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    pause = pausing.PauseControl(probe.sending, args)
    sender = threading.Thread(target=probe.send_loop, daemon=True)
    receiver = threading.Thread(target=probe.receive_loop, daemon=True)
    receiver.start()
    sender.start()
    mark_ready(args.ready_file)
    started = time.monotonic()
    while not done.is_set():
        done.wait(pause.poll_s)
        pause.settle(in_flight=lambda: probe.received + probe.duplicated < probe.sent,
                     summary=probe.summary, timeout=0.2)
        if args.progress:
            write_json(args.progress, probe.summary())
        if args.duration and time.monotonic() - started >= args.duration:
            break
        if args.count and not sender.is_alive():
            break
    probe.stop_sending.set()
    sender.join()
    # replies still in flight: wait for them, but no longer than --grace seconds
    deadline = time.monotonic() + args.grace
    while probe.received < probe.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    probe.stop_receiving.set()
    receiver.join()
    result = probe.summary()
    result["duration_s"] = round(time.monotonic() - started, 3)
    write_json(args.out, result)
    if args.progress:
        write_json(args.progress, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
