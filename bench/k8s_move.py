"""Moves of running pods on real Kubernetes nodes, ours against the federation-native way.

Usage: .venv/bin/python -m bench.k8s_move --backend kubefed|karmada [--moves 6]

Starts the control plane the k8s tests use, with its real nodes (a kubelet on containerd per
node: two in member-a, one in member-b; tests/k8s/nodes.py) and, for ``karmada``, Karmada's
own API server, webhook, controller manager and scheduler with both members joined in push
mode. A Redis, and the lab's node agent on every real node (tests/k8s/realpods.py). Then:

1. **Baseline, pod start:** a fresh echo instance placed on member-b through the backend until
   its pod is Ready (its own readiness probe), ``--baseline`` times; each removed after.
2. **Ours:** an echo pod in member-a and a probe client pod sending it 500 sequenced requests
   a second over an NSM-style VxLAN link; the engine moves the echo member-a -> member-b ->
   member-a ... ``--moves`` times, phase by phase as the workers run them (in this process;
   the node operations go to the node agents through Celery). The probe counts what is lost.
3. **Federation-native, side by side:** what a user would otherwise do. Another echo pod,
   and a sender in the host namespace addressing the pod's own IP (its Service endpoint). The
   placement is edited in one go (the new cluster added and the old one removed, the
   federation starts the new pod and deletes the old one), and the sender follows the new
   pod's address once the new pod is Ready (what a Service's endpoints do). Its time is from
   the edit to the first reply from the new pod; its loss is what the sender counted.

Prints one JSON object with the distributions (``bench.percentiles``) and the ratios against
the same run's pod start, then (``stateful``) the same moves of a session service holding
``--state-mb`` of state (1 % of it dirtied a second) with a session client checking every
counter: SYNC and CUTOVER through the state relay the node agent starts beside the pod.
Everything started is stopped, by PID. Exits non-zero if a move failed, ours lost a request
or a counter came back wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.percentiles import distribution
from mobility.models import Instance, MoveStatus
from mobility.moving import Engine, MoveRequests
from mobility.node_ops import Quiesce
from tests.k8s.conftest import client
from tests.k8s.controlplane import ControlPlane
from tests.k8s.karmada_plane import KarmadaPlane
from tests.k8s.realpods import RATE, RealLab, deploy_pair, member_pods, real_lab
from tests.k8s.stateless import NoStateAgents
from tests.k8s.test_kubefed_moves import run_move

log = logging.getLogger("bench.k8s_move")
PACKET = struct.Struct("!Q")


class Sender:
    """Sequenced UDP requests from the host to ``target``, which may be changed while it runs
    (a client following a Service's endpoints); replies counted by sequence number."""

    def __init__(self, target: tuple[str, int], rate: float = RATE) -> None:
        self.target = target
        self.interval = 1.0 / rate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.05)
        self.sent = 0
        self.seen: set[int] = set()
        self.first_reply_from: dict[str, float] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._recv, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        nxt = time.monotonic()
        while not self.stop.is_set():
            self.sock.sendto(PACKET.pack(self.sent), self.target)
            self.sent += 1
            nxt += self.interval
            time.sleep(max(0.0, nxt - time.monotonic()))

    def _recv(self) -> None:
        while not self.stop.is_set() or len(self.seen) < self.sent:
            try:
                data, peer = self.sock.recvfrom(64)
            except OSError:
                if self.stop.is_set():
                    return
                continue
            self.seen.add(PACKET.unpack(data[:PACKET.size])[0])
            self.first_reply_from.setdefault(peer[0], time.monotonic())

    def finish(self, grace: float = 1.0) -> dict[str, int]:
        self.stop.set()
        self.threads[0].join()
        self.threads[1].join(grace)
        self.sock.close()
        return {"sent": self.sent, "received": len(self.seen),
                "lost": self.sent - len(self.seen)}


def pod_ip(lab: RealLab, backend: str, inst: Instance) -> str:
    [pod] = member_pods(lab, inst.cluster, inst.pod, lab.namespace(backend))
    return str(pod["status"]["podIP"])


def baseline(lab: RealLab, backend: str, n: int) -> list[float]:
    """Pod start through the backend: place to Ready, on member-b."""
    fed, out = lab.federation(backend), []
    for i in range(n):
        # a service of its own each time: a removed one lingers (finalizers) for seconds
        inst = Instance(cluster="member-b", node=lab.node("member-b").name,
                        pod=f"base{i}-{lab.registry.next_pod_index()}")
        t0 = time.monotonic()
        fed.place(instance=inst, workload="echo", params={"port": 7000}, start=True)
        fed.wait_ready(instance=inst, timeout=120)
        out.append((time.monotonic() - t0) * 1000)
        fed.unplace(instance=inst)
    return out


def ours(lab: RealLab, backend: str, moves: int, *,
         state_mb: float | None = None) -> dict[str, Any]:
    pair = deploy_pair(lab, backend, "bench" if state_mb is None else "bstate",
                       state_mb=state_mb)
    settings = lab.settings()
    engine = Engine(registry=lab.registry, federation=pair.fed, wiring=lab.wiring,
                    state_agents=lab.state_agents if state_mb else NoStateAgents(),
                    settings=settings)
    requests = MoveRequests(registry=lab.registry, settings=settings)
    totals: list[float] = []
    freezes: list[float] = []
    phases: dict[str, list[float]] = {}
    failed: list[str] = []
    try:
        for i in range(moves):
            to = "member-b" if i % 2 == 0 else "member-a"
            move = requests.request_move(service=pair.echo, to_cluster=to)
            t0 = time.monotonic()
            done = run_move(engine, move)
            if done.status != MoveStatus.SUCCEEDED or done.target is None:
                failed.append(f"{move.id}: {done.status} {done.error}")
                break
            totals.append((time.monotonic() - t0) * 1000)
            if done.freeze_ms is not None:
                freezes.append(done.freeze_ms)
            pair.placed.append(done.target)
            for e in lab.registry.events(move.id):
                if e.kind == "phase_ended" and e.phase and e.detail.endswith(" ms"):
                    phases.setdefault(e.phase, []).append(float(e.detail[:-3]))
            pair.wait_replies(RATE // 2)
        lab.agent.call(lab.node("member-a", 1), Quiesce(pod=pair.client_at.pod), timeout=20)
        time.sleep(0.5)  # the probe writes its progress every few hundred milliseconds
        probe = pair.progress()
    finally:
        pair.remove()
    out: dict[str, Any] = {
        "moves": moves, "succeeded": len(totals), "failed": failed,
        "total_ms": distribution(totals) if totals else None,
        "phase_ms_p50": {p: distribution(v)["p50"] for p, v in phases.items()},
        "sent": probe.get("sent"), "lost": probe.get("lost"),
        "max_gap_ms": probe.get("max_gap_ms")}
    if state_mb is not None:
        out.update(state_mb=state_mb, freeze_ms=distribution(freezes) if freezes else None,
                   counters_ok=probe.get("counters_ok"))
    return out


def native(lab: RealLab, backend: str) -> dict[str, Any]:
    """One placement edit: add member-b, remove member-a, at once; the sender follows."""
    fed = lab.federation(backend)
    source = Instance(cluster="member-a", node=lab.node("member-a").name,
                      pod=f"native-{lab.registry.next_pod_index()}")
    target = Instance(cluster="member-b", node=lab.node("member-b").name,
                      pod=f"native-{lab.registry.next_pod_index()}")
    fed.place(instance=source, workload="echo", params={"port": 7000}, start=True)
    fed.wait_ready(instance=source, timeout=120)
    sender = Sender((pod_ip(lab, backend, source), 7000))
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        fed.place(instance=target, workload="echo", params={"port": 7000}, start=True)
        removal = threading.Thread(target=fed.unplace, kwargs={"instance": source})
        removal.start()
        fed.wait_ready(instance=target, timeout=120)
        new_ip = pod_ip(lab, backend, target)
        sender.target = (new_ip, 7000)  # the Service's endpoints now list the new pod
        removal.join()
        deadline = time.monotonic() + 10
        while new_ip not in sender.first_reply_from and time.monotonic() < deadline:
            time.sleep(0.005)
        took = (sender.first_reply_from.get(new_ip, time.monotonic()) - t0) * 1000
        time.sleep(1.0)
        counted = sender.finish()
    finally:
        with contextlib.suppress(Exception):
            sender.finish()
        for inst in (target, source):
            with contextlib.suppress(Exception):
                fed.unplace(instance=inst)
    return {"total_ms": round(took, 1), **counted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["kubefed", "karmada"], default="karmada")
    parser.add_argument("--moves", type=int, default=6)
    parser.add_argument("--baseline", type=int, default=5, help="pod starts to measure")
    parser.add_argument("--state-mb", type=float, default=64.0,
                        help="the stateful service's state (0: no stateful moves)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="smk8s-bench-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        cp = ControlPlane(work / "cp")
        kp: KarmadaPlane | None = None
        try:
            cp.start()
            if args.backend == "karmada":
                kp = KarmadaPlane(cp)
                kp.start()
            started_s = round(time.monotonic() - t0, 1)
            with real_lab(cp, karmada=kp.client() if kp else None) as lab:
                if args.backend == "kubefed":
                    for m in cp.members:
                        lab.kubefed.join(name=m, member=client(cp, m), ready_timeout_s=60)
                pod_start = baseline(lab, args.backend, args.baseline)
                ours_result = ours(lab, args.backend, args.moves)
                stateful_result = (ours(lab, args.backend, args.moves, state_mb=args.state_mb)
                                   if args.state_mb else None)
                native_result = native(lab, args.backend)
        finally:
            if kp is not None:
                kp.stop()
            cp.stop()
    start_p50 = float(str(distribution(pod_start)["p50"]))
    ours_p50 = (ours_result["total_ms"] or {}).get("p50")
    out = {
        "backend": args.backend, "pods": "real (kubelet v1.33 on containerd, CNI bridge)",
        "control_plane_start_s": started_s,
        "baseline_pod_start_ms": distribution(pod_start),
        "ours": ours_result,
        "ours_over_pod_start": round(float(ours_p50) / start_p50, 2) if ours_p50 else None,
        "native": native_result,
        "native_over_pod_start": round(native_result["total_ms"] / start_p50, 2),
        "stateful": stateful_result,
    }
    print(json.dumps(out))
    ok = not ours_result["failed"] and ours_result["lost"] == 0 and (
        stateful_result is None or (not stateful_result["failed"] and stateful_result["lost"] == 0
                                    and stateful_result["counters_ok"] is True))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
