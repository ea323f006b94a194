"""An echo client whose counters the drift bench reads at the instant it chooses.

Usage (inside a client pod's network namespace; the bench starts it):
    python -m bench.echo_meter --target IP:PORT [--rate 1000]

Sends the probe's sequenced requests (``dataplane.lab.workloads.probe.PACKET``) at ``--rate``
and counts the replies in memory. The lab's probe only writes its counters to a file every
200 ms, so a bench reading that file after a fault sees counts up to 200 ms old and can take
replies from before the fault for traffic coming back. This client answers on stdout, one
JSON object a line, to commands on stdin, one a line:

- ``mark``: ``{"mark", "mark_seq", "received", "t"}``: the mark's number, the last sequence
  number sent and the replies counted at that instant (``t``: ``time.monotonic()``); from
  then on, the first reply to a request sent *after* the mark is reported once as
  ``{"mark", "back_seq", "back_t"}`` (a later mark replaces an earlier one still waiting);
- ``stop``: ``{"sent", "received", "lost", "duplicated"}``, then the process exits.

It prints ``{"ready": true}`` once the first reply came back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
import time
from typing import Any

from dataplane.lab.workloads.probe import PACKET


class Meter:
    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.target = target
        self.interval = 1.0 / rate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.settimeout(0.05)
        self.lock = threading.Lock()
        self.out = threading.Lock()
        self.next_seq = 0
        self.seen: set[int] = set()
        self.duplicated = 0
        self.watch_after: int | None = None  # report the first reply with a seq above this
        self.marks = 0
        self.ready = False
        self.stop = threading.Event()

    def say(self, obj: dict[str, Any]) -> None:
        with self.out:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def send_loop(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.005))
                continue
            with self.lock:
                seq = self.next_seq
                self.next_seq += 1
            # no route while the link is gone: the request is lost, as on a wire
            with contextlib.suppress(OSError):
                self.sock.sendto(PACKET.pack(seq, now), self.target)
            next_at += self.interval

    def receive_loop(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(2048)
            except OSError:  # the timeout included: look at the stop flag again
                continue
            if len(data) < PACKET.size:
                continue
            seq, _sent_at = PACKET.unpack_from(data)
            now = time.monotonic()
            report: dict[str, Any] | None = None
            with self.lock:
                if seq in self.seen:
                    self.duplicated += 1
                    continue
                self.seen.add(seq)
                if not self.ready:
                    self.ready = True
                    report = {"ready": True}
                elif self.watch_after is not None and seq > self.watch_after:
                    self.watch_after = None
                    report = {"mark": self.marks, "back_seq": seq, "back_t": now}
            if report is not None:
                self.say(report)

    def mark(self) -> dict[str, Any]:
        with self.lock:
            t = time.monotonic()
            last = self.next_seq - 1
            self.watch_after = last
            self.marks += 1
            return {"mark": self.marks, "mark_seq": last, "received": len(self.seen), "t": t}

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"sent": self.next_seq, "received": len(self.seen),
                    "lost": self.next_seq - len(self.seen), "duplicated": self.duplicated}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="IP:PORT of the echo service")
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    meter = Meter((host, int(port)), args.rate)
    threads = [threading.Thread(target=meter.send_loop, daemon=True),
               threading.Thread(target=meter.receive_loop, daemon=True)]
    for t in threads:
        t.start()
    for line in sys.stdin:
        command = line.strip()
        if command == "mark":
            meter.say(meter.mark())
        elif command == "stop":
            break
    meter.stop.set()
    for t in threads:
        t.join()
    meter.say(meter.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
