"""Stateless moves through KubeFed on the local real control plane, through the real path.

Usage: .venv/bin/python -m bench.k8s_kwok [--moves 10]

Starts the control plane the k8s tests use (etcd, a KubeFed host, two member clusters with
controller managers, schedulers and KWOK, the KubeFed controller manager; binaries from
``scripts/k8s_assets.sh`` or ``KUBEBUILDER_ASSETS``), a Redis, an orchestration worker
(Celery) and the API, both on the KubeFed backend, as a deployment runs them. Joins the members
and deploys an echo service and a client linked to it (NSM objects), then moves the echo
service member-a -> member-b -> member-a ... with ``POST /v1/moves``, so every phase runs as
a Celery task on the worker.

**The pods are simulated**: KWOK marks them running, but no process runs in them, so no
request flows and nothing can be counted as lost; the JSON says so (``pods``). What is
measured is the orchestration: the Kubernetes objects' round trips and the Celery hops.

Prints one JSON object: ``moves``, ``succeeded``, ``failed`` (with ``errors``), ``total_ms``
and ``phase_ms`` (distributions over the succeeded moves: ``samples``, ``p50``, ``p95``,
``max``, ``p95_is_max`` below 20 samples), and two same-run baselines: ``propagation_ms``,
how long KubeFed takes to carry one FederatedDeployment edit to a member's Deployment (the
floor under PLACE and RELEASE), with ``total_over_propagation``; and ``celery_roundtrip_ms``,
a no-op task's round trip to the worker. Everything started is stopped, by PID. Exits non-zero
if any move did not succeed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

from bench import labs
from bench.percentiles import distribution, nearest_rank
from cli.client import ApiClient
from cli.demo import follow_events
from mobility import tokens
from mobility.backends.kube.client import KubeClient
from mobility.backends.kube.kubefed import KubeFedFederation
from mobility.backends.kube.nsm import NsmWiring
from mobility.deploying import Deployer
from mobility.models import Cluster, Node
from mobility.settings import Settings
from mobility.store import Registry
from tests.conftest import RedisServer, free_port
from tests.k8s.controlplane import ControlPlane

log = logging.getLogger("bench.k8s_kwok")

NAMESPACE = "mobility"
DOMAIN = "smk8s.bench"
READY_TIMEOUT_S = 30.0
PODS = "simulated (KWOK): no traffic, no loss count"


def propagation_ms(fed: KubeFedFederation, cp: ControlPlane, service: str, n: int) -> list[float]:
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
        deadline = time.monotonic() + 30
        while True:
            dep = member.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{service}") or {}
            if dep.get("metadata", {}).get("annotations", {}).get("mobility.io/bench") == str(i):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("KubeFed did not carry an edit to member-a in 30 s")
            time.sleep(0.005)
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


class Processes:
    """The orchestration worker and the API, on the KubeFed backend; stopped by PID."""

    def __init__(self, workdir: Path, *, redis_url: str, kubeconfig: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
        env.update(MOBILITY_REDIS_URL=redis_url, MOBILITY_BACKEND="kubefed",
                   MOBILITY_KUBECONFIG=str(kubeconfig), MOBILITY_KUBE_CONTEXT="host",
                   MOBILITY_KUBE_NAMESPACE=NAMESPACE, MOBILITY_NSM_DOMAIN=DOMAIN,
                   MOBILITY_READY_TIMEOUT_S=str(READY_TIMEOUT_S), MOBILITY_ENV_FILE=os.devnull,
                   MOBILITY_RUN_ROOT=str(workdir), PYTHONUNBUFFERED="1")
        self.logs: list[IO[bytes]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for name, argv in (
            ("worker", [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q",
                        "orchestration", "-P", "threads", "-c", "8", "-n",
                        f"bench-k8s-{self.port}@bench", "--without-gossip",
                        "--without-mingle", "-l", "INFO"]),
            ("api", [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                     "--host", "127.0.0.1", "--port", str(self.port), "--log-level",
                     "warning"]),
        ):
            out = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop())
            self.logs.append(out)
            self.procs.append(subprocess.Popen(argv, env=env, stdout=out,
                                               stderr=subprocess.STDOUT))

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, redis_url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not answer:\n"
                                   + (self.workdir / "api.log").read_text()[-2000:])
            time.sleep(0.1)
        try:
            labs.celery_roundtrip_ms(redis_url, n=1)
        except Exception as exc:
            raise RuntimeError("the orchestration worker did not answer:\n"
                               + (self.workdir / "worker.log").read_text()[-2000:]) from exc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self.logs:
            f.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=10)
    args = parser.parse_args()
    labs.start_logging()

    with tempfile.TemporaryDirectory(prefix="smk8s-bench-") as tmp:
        redis_server = RedisServer(Path(tmp))
        cp = ControlPlane(Path(tmp) / "cp", spare=None)
        procs: Processes | None = None
        failed = 1  # until the moves ran
        try:
            cp.start()
            log.info("control plane up in %s s", cp.started_s)
            host = KubeClient.from_kubeconfig(cp.kubeconfig, context="host", timeout=5)
            fed = KubeFedFederation(host=host, namespace=NAMESPACE, domain=DOMAIN)
            for m in cp.members:
                fed.join(name=m, member=KubeClient.from_kubeconfig(cp.kubeconfig, context=m),
                         ready_timeout_s=60)
            # The members' nodes are KWOK's: these addresses are records, never reached.
            clusters = {m: Cluster(name=m, nodes=tuple(
                Node(name=n, cluster=m, underlay_ip=f"198.18.{k}.{i}")
                for i, n in enumerate(cp.node_names(m), start=11)))
                for k, m in enumerate(cp.members, start=1)}
            registry = Registry.from_url(redis_server.url)
            for c in clusters.values():
                registry.put_cluster(c)
            wiring = NsmWiring(registry=host, members=fed.member, clusters=lambda: clusters,
                               namespace=NAMESPACE)
            # deploying is setup, not measured: done here, with the worker's settings
            deployer = Deployer(registry=registry, federation=fed, wiring=wiring,
                                settings=Settings(ready_timeout_s=READY_TIMEOUT_S))
            deployer.deploy(name="bench-echo", workload="echo", params={}, cluster="member-a",
                            peers=[])
            deployer.deploy(name="bench-client", workload="probe", params={},
                            cluster="member-a", peers=["bench-echo"])
            procs = Processes(Path(tmp), redis_url=redis_server.url, kubeconfig=cp.kubeconfig)
            procs.wait_ready(redis_server.url)
            propagation = propagation_ms(fed, cp, "bench-client", 10)
            roundtrip = labs.celery_roundtrip_ms(redis_server.url)
            record, token = tokens.mint(role=tokens.Role.OPERATOR, name="bench k8s_kwok",
                                        ttl_s=3600)
            registry.put_token(record)
            result, totals = run_moves(procs.api_url, token=token, moves=args.moves)
            propagation += propagation_ms(fed, cp, "bench-client", 10)
            roundtrip += labs.celery_roundtrip_ms(redis_server.url)
            prop_p50 = statistics.median(propagation)
            result.update(
                propagation_ms={"p50": round(prop_p50, 1), "samples": len(propagation)},
                total_over_propagation=(round(nearest_rank(totals, 50) / prop_p50, 1)
                                        if totals and prop_p50 else None),
                celery_roundtrip_ms={"p50": round(statistics.median(roundtrip), 2),
                                     "samples": len(roundtrip)},
                control_plane_start_s=cp.started_s,
            )
            print(json.dumps(result))
            failed = int(result["failed"])
            deployer.remove("bench-client")
            deployer.remove("bench-echo")
        finally:
            if procs is not None:
                procs.stop()
            cp.stop()
            redis_server.stop()
    return 0 if failed == 0 else 1


def run_moves(api_url: str, *, token: str,
              moves: int) -> tuple[dict[str, Any], list[float]]:
    """The moves through the API: the result's figures, and the succeeded moves' totals."""
    totals: list[float] = []
    phases: dict[str, list[float]] = {}
    errors: list[dict[str, Any]] = []
    with ApiClient(api_url, token=token, timeout=120) as api:
        for i in range(moves):
            at = api.get("/v1/services/bench-echo").json()["instance"]["cluster"]
            to = "member-b" if at == "member-a" else "member-a"
            r = api.post("/v1/moves", json={"service": "bench-echo", "to_cluster": to})
            r.raise_for_status()
            move_id = r.json()["id"]
            follow_events(api, move_id, lambda _e: None)
            move: dict[str, Any] = api.get(f"/v1/moves/{move_id}").json()
            if move["status"] != "succeeded" or move["total_ms"] is None:
                log.error("move %d (%s) %s: %s", i, move_id, move["status"], move["error"])
                errors.append({"move": move_id, "status": move["status"],
                               "error": move["error"]})
                continue
            totals.append(float(move["total_ms"]))
            for p, ms in move["phase_ms"].items():
                phases.setdefault(p, []).append(float(ms))
    return {
        "pods": PODS,
        "driver": "HTTP API and a Celery orchestration worker on the KubeFed backend",
        "moves": moves,
        "succeeded": len(totals),
        "failed": moves - len(totals),
        "errors": errors,
        "total_ms": distribution(totals),
        "phase_ms": {p: distribution(v) for p, v in phases.items()},
    }, totals


if __name__ == "__main__":
    raise SystemExit(main())
