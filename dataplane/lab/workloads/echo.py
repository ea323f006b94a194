"""UDP echo service: every datagram is sent back unchanged to its sender.

Usage: python -m dataplane.lab.workloads.echo --port 7000 [--ready-file PATH]
The ready file is written once the socket is bound, so the orchestrator knows the instance
answers before it moves any traffic to it.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from dataplane.lab.workloads.files import mark_ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--ready-file")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((args.bind, args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    mark_ready(args.ready_file)
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


if __name__ == "__main__":
    raise SystemExit(main())
