"""Stateless moves through KubeFed on the local real control plane.

Usage: .venv/bin/python -m bench.k8s_move [--moves 10]

Starts the control plane the k8s tests use (etcd, a KubeFed host, two member clusters with
controller managers, schedulers and KWOK, the KubeFed controller manager; binaries from
``scripts/k8s_assets.sh``) and a Redis, joins the members through the adapter, deploys an
echo service and a probe client linked to it (NSM objects), then moves the echo service
member-a -> member-b -> member-a ... with the engine, phase by phase, as the workers would.

Prints one JSON object: ``moves``, ``total_ms_p50``, ``total_ms_p95``, ``phase_ms_p50``, and
the same-run baseline ``propagation_ms_p50``: how long KubeFed takes to carry one
FederatedDeployment edit to a member's Deployment on this machine (the floor under PLACE and
RELEASE), with ``total_over_propagation`` as the ratio. Everything started is stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mobility.backends.kube.client import KubeClient
from mobility.backends.kube.kubefed import KubeFedFederation
from mobility.backends.kube.nsm import NsmWiring
from mobility.deploying import Deployer
from mobility.models import Cluster, MoveStatus, Node
from mobility.moving import Engine, MoveRequests
from mobility.phases import ORDER
from mobility.settings import Settings
from mobility.store import Registry
from tests.conftest import RedisServer
from tests.k8s.controlplane import ControlPlane
from tests.k8s.stateless import NoStateAgents

NAMESPACE = "mobility"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)


def propagation_ms(fed: KubeFedFederation, cp: ControlPlane, service: str, n: int) -> float:
    """KubeFed's edit-to-member latency: bump an override annotation, wait for the member."""
    samples = []
    host = fed.host
    path = f"/apis/types.kubefed.io/v1beta1/namespaces/{NAMESPACE}/federateddeployments/{service}"
    member = cp.servers["member-a"]
    for i in range(n):
        def bump(obj: dict[str, object], i: int = i) -> bool:
            spec = obj["spec"]
            assert isinstance(spec, dict)
            for item in spec["overrides"]:
                for o in item["clusterOverrides"]:
                    if o["path"] == "/metadata/annotations":
                        o["value"]["mobility.io/bench"] = str(i)
            return True

        t0 = time.perf_counter()
        host.update(path, bump)
        while True:
            dep = member.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{service}") or {}
            if dep.get("metadata", {}).get("annotations", {}).get("mobility.io/bench") == str(i):
                break
            time.sleep(0.005)
        samples.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(samples), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moves", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="smk8s-bench-") as tmp:
        redis_server = RedisServer(Path(tmp))
        cp = ControlPlane(Path(tmp) / "cp", spare=None)
        try:
            cp.start()
            host = KubeClient.from_kubeconfig(cp.kubeconfig, context="host", timeout=5)
            fed = KubeFedFederation(host=host, namespace=NAMESPACE, domain="smk8s.bench")
            for m in cp.members:
                fed.join(name=m, member=KubeClient.from_kubeconfig(cp.kubeconfig, context=m),
                         ready_timeout_s=60)
            clusters = {m: Cluster(name=m, nodes=tuple(
                Node(name=n, cluster=m, underlay_ip=f"198.18.{k}.{i}")
                for i, n in enumerate(cp.node_names(m), start=11)))
                for k, m in enumerate(cp.members, start=1)}
            registry = Registry.from_url(redis_server.url)
            for c in clusters.values():
                registry.put_cluster(c)
            wiring = NsmWiring(registry=host, members=fed.member, clusters=lambda: clusters,
                               namespace=NAMESPACE)
            settings = Settings(ready_timeout_s=30.0, lease_ttl_s=5.0)
            deployer = Deployer(registry=registry, federation=fed, wiring=wiring,
                                settings=settings)
            deployer.deploy(name="bench-echo", workload="echo", params={}, cluster="member-a",
                            peers=[])
            deployer.deploy(name="bench-client", workload="probe", params={},
                            cluster="member-a", peers=["bench-echo"])
            baseline = propagation_ms(fed, cp, "bench-client", 10)
            engine = Engine(registry=registry, federation=fed, wiring=wiring,
                            state_agents=NoStateAgents(), settings=settings)
            totals: list[float] = []
            phases: dict[str, list[float]] = {str(p): [] for p in ORDER}
            failed = 0
            for i in range(args.moves):
                to = "member-b" if i % 2 == 0 else "member-a"
                requests = MoveRequests(registry=engine.registry, settings=engine.settings)
                move = requests.request_move(service="bench-echo", to_cluster=to, origin="bench")
                try:
                    for phase in ORDER:
                        engine.run_phase(move.id, move.epoch, phase)
                    done = engine.complete(move.id, move.epoch)
                except Exception as e:
                    done = engine.compensate(move.id, move.epoch, error=str(e))
                if done.status != MoveStatus.SUCCEEDED or done.total_ms is None:
                    failed += 1
                    print(f"move {i} {done.status}: {done.error}", file=sys.stderr)
                    continue
                totals.append(done.total_ms)
                for p, ms in done.phase_ms.items():
                    phases[p].append(ms)
            result = {
                "moves": len(totals),
                "failed": failed,
                "total_ms_p50": pct(totals, 0.5) if totals else None,
                "total_ms_p95": pct(totals, 0.95) if totals else None,
                "phase_ms_p50": {p: pct(v, 0.5) for p, v in phases.items() if v},
                "propagation_ms_p50": baseline,
                "total_over_propagation": (round(pct(totals, 0.5) / baseline, 1)
                                           if totals and baseline else None),
                "control_plane_start_s": cp.started_s,
            }
            print(json.dumps(result))
            deployer.remove("bench-client")
            deployer.remove("bench-echo")
        finally:
            cp.stop()
            redis_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
