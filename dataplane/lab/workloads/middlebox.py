"""A middlebox pod: IP forwarding between its NSM-style links, with per-flow counters.

Usage: python -m dataplane.lab.workloads.middlebox --flows PATH [--ready-file PATH]

The kernel forwards (``net.ipv4.ip_forward=1`` in the pod's namespace, set here): the
middlebox is on the data path the way a firewall or NAT pod is, not a proxy. Per-flow counters
come from a packet socket that sees every packet on the pod's links: packets and bytes per
(protocol, source, destination, ports), written to ``--flows`` as JSON every 200 ms.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys
import threading
import time

from dataplane.lab.workloads.files import mark_ready, write_json

ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def enable_forwarding() -> None:
    """Forwarding on, reverse-path filter off (the chain's return path may enter on another
    link than the forward path left by). /proc/sys/net is per network namespace: this is the
    pod's. In a container /proc/sys is read-only: the node agent set them before the start
    (as a Kubernetes pod's sysctls are), so here they are only checked."""
    wanted = {"/proc/sys/net/ipv4/ip_forward": "1"}
    for name in os.listdir("/proc/sys/net/ipv4/conf"):
        wanted[f"/proc/sys/net/ipv4/conf/{name}/rp_filter"] = "0"
    for path, value in wanted.items():
        try:
            with open(path, "w") as fh:
                fh.write(value)
        except OSError:
            with open(path) as fh:
                if fh.read().strip() != value:
                    raise SystemExit(f"middlebox: {path} is not {value} and cannot be set "
                                     "here") from None


def flow_key(frame: bytes) -> tuple[str, int] | None:
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src = socket.inet_ntoa(frame[26:30])
    dst = socket.inet_ntoa(frame[30:34])
    sport = dport = 0
    if proto in (6, 17) and len(frame) >= 14 + ihl + 4:
        sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    name = {6: "tcp", 17: "udp", 1: "icmp"}.get(proto, str(proto))
    return f"{name} {src}:{sport} -> {dst}:{dport}", len(frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", required=True)
    parser.add_argument("--ready-file")
    args = parser.parse_args(argv)
    enable_forwarding()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.settimeout(0.2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    flows: dict[str, list[int]] = {}
    lock = threading.Lock()

    def dump() -> None:
        while True:
            time.sleep(0.2)
            with lock:
                snapshot = {k: {"packets": v[0], "bytes": v[1]} for k, v in flows.items()}
            write_json(args.flows, snapshot)

    threading.Thread(target=dump, daemon=True).start()
    mark_ready(args.ready_file)
    while True:
        try:
            frame, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if addr[2] == PACKET_OUTGOING:
            continue  # count each forwarded packet once, as it comes in
        found = flow_key(frame)
        if found is None:
            continue
        key, size = found
        with lock:
            entry = flows.setdefault(key, [0, 0])
            entry[0] += 1
            entry[1] += size


if __name__ == "__main__":
    raise SystemExit(main())
