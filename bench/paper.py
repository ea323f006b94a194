"""The reference paper's Fig. 3 (throughput) and Fig. 4 (latency), reproduced on namespaces.

Usage: .venv/bin/python -m bench.paper [--duration 3] [--runs 3] [--pings 300]
       [--plot bench/out/paper.png]

The paper (``../shared/reference/paper-multicloud-kubernetes-nsm-kubefed.txt``) measured iperf3
TCP and UDP throughput and ping latency between two pods over NSM's VxLAN links, in one cluster
and across two, at a 1,500 and an 8,900-byte MTU, against machine-to-machine as the bare-metal
row. Here, on one host, built from network namespaces under a unique prefix:

- ``direct-veth``: a veth pair between two namespaces at the underlay MTU, the baseline (the
  paper's machine-to-machine row);
- ``single-cluster``: two pods on two nodes of one cluster, linked by ``links.create_end`` over
  VxLAN on one L2 underlay (a bridge);
- ``multi-cluster``: the same link between pods on nodes of two clusters, each on its own
  underlay subnet, joined by a router namespace;

each at a 1,500 and a 9,000-byte underlay MTU (``create_end`` computes the link MTU). TCP is
iperf3's default stream; UDP follows the paper: unlimited rate (``-b 0``), 60 kB writes, the
rate measured at the receiving side. Every cell is ``--runs`` runs of ``--duration`` seconds,
interleaved across the paths so machine noise hits all of them alike, reported as the median.
Latency is ICMP echo (``ping``, 56-byte payload, as in the paper; a UDP echo round trip when
``ping`` is not installed, named in ``latency_probe``), reported as the p50 of ``--pings``
round trips after a warm-up. SCTP, which the paper also measured, is tried with
``socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)``; a kernel without it gives rows with
``"unsupported": true`` instead of a zero.

Prints one JSON object ``{"rows": [...]}``, a row per path, protocol and MTU, with ``path``,
``protocol``, ``mtu`` (underlay), ``gbit_s``, ``ratio_to_baseline`` (against ``direct-veth``
at the same protocol and MTU, measured in the same run), ``latency_us_p50``, and for context
``link_mtu``, ``runs_gbit_s``, ``latency_overhead_us`` (p50 minus the baseline's p50),
``latency_probe`` and, for UDP, ``lost_percent``. Draws both figures into one PNG (``--plot``).
Nothing it makes outlives it: namespaces carry its prefix and go in a ``finally``, the iperf3
servers it started are stopped by PID; no host link or host route is made.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from dataplane import links, netlink
from dataplane.netlink import Netlink

log = logging.getLogger("bench.paper")

PATHS = ("direct-veth", "single-cluster", "multi-cluster")
PROTOCOLS = ("tcp", "udp", "sctp")
MTUS = (1500, 9000)
IPERF_PORT = 5201
UDP_LEN = "60K"  # the paper's UDP buffer length
ICMP_PAYLOAD = 56  # ping's default, as the paper used it
VNI = {"single-cluster": 4401, "multi-cluster": 4402}
# Underlay addresses inside 198.19.128.0/17, kept for benchmarks and tests that make no host
# route; the lab (198.18.0.0/16) and the test lab (198.19.0.0/16 below .128) stay clear.
SINGLE_NET = "198.19.230"
MULTI_NETS = ("198.19.231", "198.19.232")


@dataclass(frozen=True)
class MeasuredPath:
    """One measured path: where the client and server run, and the server's address."""

    name: str
    client_ns: str
    server_ns: str
    server_ip: str
    link_mtu: int


# --- topology -----------------------------------------------------------------------------


def _veth_to(outer: Netlink, *, ifname: str, peer_ns: str, mtu: int) -> None:
    outer.add_veth(ifname, peer="eth0", peer_namespace=peer_ns)
    outer.set_mtu(ifname, mtu)
    outer.set_up(ifname)


def _node(ns: str, *, cidr: str, mtu: int, gateway: str | None = None) -> None:
    with Netlink(ns) as n:
        n.set_mtu("eth0", mtu)
        n.add_address("eth0", cidr)
        n.set_up("eth0")
        if gateway is not None:
            n.set_route("default", gateway=gateway)


def _pod_pair(prefix: str, tag: str, *, nodes: list[tuple[str, str]], vni: int,
              underlay_mtu: int) -> tuple[str, str, str, int]:
    """Two pods on two nodes, one NSM-style VxLAN link.

    Returns the client pod, the server pod, the server's link address and the link MTU.
    """
    ips = (f"169.254.{vni % 200}.1", f"169.254.{vni % 200}.2")
    macs = (f"02:be:{vni % 256:02x}:00:00:01", f"02:be:{vni % 256:02x}:00:00:02")
    pods = (f"{prefix}-{tag}p1", f"{prefix}-{tag}p2")
    mtu = 0
    for i in (0, 1):
        j = 1 - i
        netlink.create_namespace(pods[i])
        mtu = links.create_end(
            ifname="nsm-1", vni=vni, underlay_mtu=underlay_mtu,
            peer=links.Peer(mac=macs[j], ip=ips[j], node_ip=nodes[j][1]),
            end=links.LinkEnd(pod_namespace=pods[i], node_namespace=nodes[i][0],
                              node_ip=nodes[i][1], mac=macs[i], cidr=f"{ips[i]}/30"),
        )
    return pods[0], pods[1], ips[1], mtu


def build_direct(prefix: str, mtu: int) -> MeasuredPath:
    a, b = f"{prefix}-d1", f"{prefix}-d2"
    for ns in (a, b):
        netlink.create_namespace(ns)
    with Netlink(a) as nl:
        nl.add_veth("eth1", peer="eth1", peer_namespace=b)
    for ns, ip in ((a, "169.254.30.1"), (b, "169.254.30.2")):
        with Netlink(ns) as nl:
            nl.set_mtu("eth1", mtu)
            nl.add_address("eth1", f"{ip}/30")
            nl.set_up("eth1")
    return MeasuredPath("direct-veth", a, b, "169.254.30.2", mtu)


def build_single_cluster(prefix: str, mtu: int) -> MeasuredPath:
    underlay = f"{prefix}-ul"
    netlink.create_namespace(underlay)
    nodes = []
    with Netlink(underlay) as ul:
        ul.add_bridge("br0")
        ul.set_up("br0")
        for i in (1, 2):
            node = f"{prefix}-s{i}"
            netlink.create_namespace(node)
            _veth_to(ul, ifname=f"u{i}", peer_ns=node, mtu=mtu)
            ul.set_master(f"u{i}", "br0")
            _node(node, cidr=f"{SINGLE_NET}.{10 + i}/24", mtu=mtu)
            nodes.append((node, f"{SINGLE_NET}.{10 + i}"))
    client, server, ip, link_mtu = _pod_pair(prefix, "s", nodes=nodes,
                                             vni=VNI["single-cluster"], underlay_mtu=mtu)
    return MeasuredPath("single-cluster", client, server, ip, link_mtu)


def build_multi_cluster(prefix: str, mtu: int) -> MeasuredPath:
    router = f"{prefix}-r"
    netlink.create_namespace(router)
    netlink.set_sysctl(router, "net.ipv4.ip_forward", "1")
    nodes = []
    with Netlink(router) as r:
        for i, net in enumerate(MULTI_NETS, start=1):
            node = f"{prefix}-m{i}"
            netlink.create_namespace(node)
            _veth_to(r, ifname=f"c{i}", peer_ns=node, mtu=mtu)
            r.add_address(f"c{i}", f"{net}.1/24")
            _node(node, cidr=f"{net}.11/24", mtu=mtu, gateway=f"{net}.1")
            nodes.append((node, f"{net}.11"))
    client, server, ip, link_mtu = _pod_pair(prefix, "m", nodes=nodes,
                                             vni=VNI["multi-cluster"], underlay_mtu=mtu)
    return MeasuredPath("multi-cluster", client, server, ip, link_mtu)


def teardown(prefix: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the processes this run started (by PID), then remove its namespaces."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    procs.clear()
    for ns in netlink.namespaces(f"{prefix}-"):
        netlink.delete_namespace(ns)


# --- measurements ------------------------------------------------------------------------


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def start_server(path: MeasuredPath) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(in_ns(path.server_ns, "iperf3", "-s", "-B", path.server_ip, "-p",
                                  str(IPERF_PORT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(in_ns(path.server_ns, "ss", "-Hltn", f"sport = :{IPERF_PORT}"),
                             capture_output=True, text=True, check=False, timeout=10).stdout
        if out.strip():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"iperf3 server in {path.server_ns} did not start")


def iperf(path: MeasuredPath, protocol: str, duration: float) -> dict[str, float]:
    """One iperf3 run; the rate the *receiver* saw, in Gbit/s (and UDP loss)."""
    cmd = ["iperf3", "-c", path.server_ip, "-p", str(IPERF_PORT), "-t", str(duration), "-J"]
    if protocol == "udp":
        cmd += ["-u", "-b", "0", "-l", UDP_LEN]
    elif protocol == "sctp":
        cmd += ["--sctp"]
    for attempt in range(3):
        proc = subprocess.run(in_ns(path.client_ns, *cmd), capture_output=True, text=True,
                              check=False, timeout=duration + 30)
        try:
            result = json.loads(proc.stdout)
        except ValueError:
            result = {"error": proc.stderr.strip() or "no output"}
        if "error" not in result:
            received = result["end"]["sum_received"]
            out = {"gbit_s": received["bits_per_second"] / 1e9}
            if protocol == "udp":
                out["lost_percent"] = float(result["end"]["sum"].get("lost_percent", 0.0))
            return out
        log.warning("iperf3 %s on %s, attempt %d: %s", protocol, path.name, attempt + 1,
                    result["error"])
        time.sleep(1.0)  # "the server is busy": the previous test is still being closed
    raise RuntimeError(f"iperf3 {protocol} on {path.name} failed three times")


PING_TIME = re.compile(r"time=([0-9.]+) ms")


def ping_rtts_us(path: MeasuredPath, count: int) -> list[float]:
    """ICMP echo round trips in µs, after a warm-up that fills caches and neighbour tables."""
    base = ["ping", "-n", "-s", str(ICMP_PAYLOAD), "-W", "1"]
    subprocess.run(in_ns(path.client_ns, *base, "-c", "5", "-i", "0.01", path.server_ip),
                   capture_output=True, check=False, timeout=30)
    proc = subprocess.run(in_ns(path.client_ns, *base, "-c", str(count), "-i", "0.005",
                                path.server_ip),
                          capture_output=True, text=True, check=False, timeout=count * 0.05 + 30)
    rtts = [float(m) * 1000 for m in PING_TIME.findall(proc.stdout)]
    if len(rtts) < count * 0.9:
        raise RuntimeError(f"ping over {path.name}: {len(rtts)} of {count} replies")
    return rtts


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7007))
s.settimeout(30)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""

UDP_PROBE = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
rtts = []
for i in range(int(sys.argv[2]) + 5):
    t0 = time.perf_counter()
    s.sendto(b"x" * 56, (sys.argv[1], 7007))
    try:
        s.recvfrom(2048)
    except TimeoutError:
        continue
    if i >= 5:
        rtts.append((time.perf_counter() - t0) * 1e6)
    time.sleep(0.002)
print(json.dumps(rtts))
"""


def udp_rtts_us(path: MeasuredPath, count: int) -> list[float]:
    """The fallback probe: a 56-byte UDP echo round trip, timed in the client, in µs."""
    echo = subprocess.Popen(in_ns(path.server_ns, sys.executable, "-c", UDP_ECHO,
                                  path.server_ip), stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        proc = subprocess.run(in_ns(path.client_ns, sys.executable, "-c", UDP_PROBE,
                                    path.server_ip, str(count)),
                              capture_output=True, text=True, check=True, timeout=count + 30)
        return [float(x) for x in json.loads(proc.stdout)]
    finally:
        echo.terminate()
        echo.wait(5)


def sctp_support() -> tuple[bool, str]:
    """Whether this kernel speaks SCTP: the socket call is the test (it loads the module)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "?")
        return False, f"socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {name} ({exc.strerror})"
    return True, ""


# --- the run -----------------------------------------------------------------------------


@dataclass
class Cell:
    runs: list[float]
    lost: list[float]


def measure_mtu(prefix: str, mtu: int, *, args: argparse.Namespace, sctp: bool,
                procs: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    """All paths at one underlay MTU: throughput cells, then latency, interleaved by run."""
    paths = [build_direct(prefix, mtu), build_single_cluster(prefix, mtu),
             build_multi_cluster(prefix, mtu)]
    for p in paths:
        procs.append(start_server(p))
    protocols = ["tcp", "udp"] + (["sctp"] if sctp else [])
    cells = {(p.name, proto): Cell([], []) for p in paths for proto in protocols}
    for run in range(args.runs):
        for proto in protocols:
            for p in paths:
                got = iperf(p, proto, args.duration)
                cells[(p.name, proto)].runs.append(got["gbit_s"])
                if "lost_percent" in got:
                    cells[(p.name, proto)].lost.append(got["lost_percent"])
                log.info("mtu %d run %d %s %s: %.2f Gbit/s", mtu, run + 1, proto, p.name,
                         got["gbit_s"])
    use_ping = shutil.which("ping") is not None
    rtts: dict[str, list[float]] = {p.name: [] for p in paths}
    per_round = max(1, args.pings // args.runs)
    for _ in range(args.runs):  # interleaved too, so a noisy second does not land on one path
        for p in paths:
            rtts[p.name] += (ping_rtts_us(p, per_round) if use_ping
                             else udp_rtts_us(p, per_round))
    latency = {}
    for p in paths:
        latency[p.name] = (statistics.median(rtts[p.name]), statistics.fmean(rtts[p.name]))
        log.info("mtu %d latency %s: p50 %.1f us over %d round trips", mtu, p.name,
                 latency[p.name][0], len(rtts[p.name]))
    return {"paths": {p.name: p for p in paths}, "cells": cells, "latency": latency,
            "probe": "icmp-ping" if use_ping else "udp-echo"}


def rows_for(mtu: int, measured: dict[str, Any], *, sctp: tuple[bool, str]) -> list[dict[str, Any]]:
    rows = []
    base_lat = measured["latency"]["direct-veth"][0]
    for name in PATHS:
        path: MeasuredPath = measured["paths"][name]
        p50, mean = measured["latency"][name]
        for proto in PROTOCOLS:
            row: dict[str, Any] = {"path": name, "protocol": proto, "mtu": mtu,
                                   "link_mtu": path.link_mtu}
            cell = measured["cells"].get((name, proto))
            if cell is None:
                row.update(gbit_s=None, ratio_to_baseline=None, latency_us_p50=None,
                           unsupported=True, reason=sctp[1] or "not measured")
                rows.append(row)
                continue
            gbit = statistics.median(cell.runs)
            base = statistics.median(measured["cells"][("direct-veth", proto)].runs)
            row.update(gbit_s=round(gbit, 2), ratio_to_baseline=round(gbit / base, 3),
                       latency_us_p50=round(p50, 1), latency_us_mean=round(mean, 1),
                       latency_overhead_us=round(p50 - base_lat, 1),
                       latency_probe=measured["probe"],
                       runs_gbit_s=[round(r, 2) for r in cell.runs])
            if cell.lost:
                row["lost_percent"] = round(statistics.median(cell.lost), 2)
            rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], out: Path, *, title: str) -> None:
    """Fig. 3 (throughput, grouped bars per path) and Fig. 4 (latency) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def find(path: str, proto: str, mtu: int) -> dict[str, Any]:
        return next(r for r in rows if (r["path"], r["protocol"], r["mtu"]) == (path, proto, mtu))

    fig, (ax3, ax4) = plt.subplots(1, 2, figsize=(13, 5.2),
                                   gridspec_kw={"width_ratios": [1.6, 1]})
    series = [(proto, mtu) for proto in ("tcp", "udp") for mtu in MTUS]
    colours = {("tcp", 1500): "#9ecae1", ("tcp", 9000): "#3182bd",
               ("udp", 1500): "#fdae6b", ("udp", 9000): "#e6550d"}
    width = 0.8 / len(series)
    for k, (proto, mtu) in enumerate(series):
        xs, heights, lo, hi = [], [], [], []
        for i, path in enumerate(PATHS):
            r = find(path, proto, mtu)
            xs.append(i - 0.4 + width * (k + 0.5))
            heights.append(r["gbit_s"])
            lo.append(r["gbit_s"] - min(r["runs_gbit_s"]))
            hi.append(max(r["runs_gbit_s"]) - r["gbit_s"])
        bars = ax3.bar(xs, heights, width, yerr=[lo, hi], capsize=3, color=colours[(proto, mtu)],
                       edgecolor="black", linewidth=0.5, label=f"{proto.upper()}, MTU {mtu}")
        ax3.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax3.set_xticks(range(len(PATHS)), [p.replace("-", "\n") for p in PATHS])
    ax3.set_ylabel("Throughput (Gb/s)")
    ax3.set_title("Fig. 3: throughput (iperf3, median of runs, min-max bars)")
    ax3.set_ylim(0, ax3.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax3.legend(fontsize=8, loc="upper left", ncol=2)
    ax3.grid(axis="y", alpha=0.3)
    sctp_rows = [r for r in rows if r["protocol"] == "sctp"]
    if sctp_rows and all(r.get("unsupported") for r in sctp_rows):
        ax3.text(0.99, 0.97, "SCTP: unsupported by this kernel\n(reported as such, not as 0)",
                 transform=ax3.transAxes, fontsize=8, va="top", ha="right", style="italic")
    for k, mtu in enumerate(MTUS):
        xs = [i - 0.2 + 0.4 * k for i in range(len(PATHS))]
        heights = [find(path, "tcp", mtu)["latency_us_p50"] for path in PATHS]
        bars = ax4.bar(xs, heights, 0.4, color=("#bdbdbd", "#636363")[k], edgecolor="black",
                       linewidth=0.5, label=f"MTU {mtu}")
        ax4.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    ax4.set_xticks(range(len(PATHS)), [p.replace("-", "\n") for p in PATHS])
    ax4.set_ylabel("Round-trip latency, p50 (µs)")
    probe = find("direct-veth", "tcp", MTUS[0])["latency_probe"]
    ax4.set_title(f"Fig. 4: latency ({probe}, {ICMP_PAYLOAD}-byte payload)")
    ax4.set_ylim(0, ax4.get_ylim()[1] * 1.2)
    ax4.legend(fontsize=8, loc="upper left", ncol=2)
    ax4.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


@contextlib.contextmanager
def terminated_by_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run through the ``finally`` that cleans up, like Ctrl-C does.

    Only in this process: pyroute2 forks helper children (to make namespaces and namespace
    sockets) and stops them with SIGTERM; a child that inherited this handler would unwind the
    copy of our stack it was forked with and run our cleanup, deleting the namespaces the
    parent is using. A child exits at once instead.
    """
    owner = os.getpid()

    def stop(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per iperf3 run")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--pings", type=int, default=300, help="round trips per latency cell")
    parser.add_argument("--plot", type=Path, default=Path("bench/out/paper.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if os.geteuid() != 0:
        parser.error("needs root: it builds network namespaces")
    if shutil.which("iperf3") is None:
        parser.error("iperf3 is not installed")
    if importlib.util.find_spec("matplotlib") is None:  # found now, not after two minutes
        parser.error("matplotlib is not installed: .venv/bin/pip install matplotlib")

    sctp = sctp_support()
    if not sctp[0]:
        log.info("SCTP unsupported: %s", sctp[1])
    prefix = f"smbp{secrets.token_hex(2)}"
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with terminated_by_signals():
        for mtu in MTUS:
            try:
                measured = measure_mtu(prefix, mtu, args=args, sctp=sctp[0], procs=procs)
                rows.extend(rows_for(mtu, measured, sctp=sctp))
            finally:
                teardown(prefix, procs)
    left = netlink.namespaces(f"{prefix}-")
    if left:
        log.error("namespaces left behind: %s", left)
    log.info("done in %.0f s", time.monotonic() - started)
    order = {(p, q, m): i for i, (p, q, m) in
             enumerate((p, q, m) for p in PATHS for q in PROTOCOLS for m in MTUS)}
    rows.sort(key=lambda r: order[(r["path"], r["protocol"], r["mtu"])])
    print(json.dumps({"rows": rows}, indent=1))
    plot(rows, args.plot,
         title=f"service-mobility on namespaces: {os.cpu_count()} CPUs, kernel "
               f"{os.uname().release}, {args.runs} x {args.duration:g} s per cell")
    log.info("plot: %s", args.plot)
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
