"""Pausing a client workload around its own move (shared by both probe clients).

SIGUSR1: stop sending new requests and, once nothing is in flight, write ``--paused-file``
(the node agent's ``quiesce`` waits for it before the cutover moves this client's traffic).
SIGUSR2: send again. ``--paused`` starts a moved client's new instance paused.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable

from dataplane.lab.workloads.files import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paused", action="store_true",
                        help="start paused: a moved client sends once its links carry traffic")
    parser.add_argument("--paused-file", help="written once paused with nothing in flight")


class PauseControl:
    def __init__(self, sending: threading.Event, args: argparse.Namespace) -> None:
        self.sending = sending
        self.paused_file: str | None = args.paused_file
        self.asked = threading.Event()
        signal.signal(signal.SIGUSR1, self._pause)
        signal.signal(signal.SIGUSR2, self._go_on)
        if args.paused:
            sending.clear()

    def _pause(self, *_: object) -> None:
        self.sending.clear()
        self.asked.set()

    def _go_on(self, *_: object) -> None:
        self.sending.set()

    @property
    def poll_s(self) -> float:
        """How long the main loop may sleep: briefly while a pause is being settled."""
        return 0.01 if self.asked.is_set() else 0.2

    def settle(self, *, in_flight: Callable[[], bool], summary: Callable[[], object],
               timeout: float) -> None:
        """Called from the main loop: once asked, wait for in-flight requests, then report."""
        if not self.asked.is_set():
            return
        deadline = time.monotonic() + timeout
        while in_flight() and time.monotonic() < deadline:
            time.sleep(0.002)
        self.asked.clear()
        if self.paused_file:
            write_json(self.paused_file, summary())
