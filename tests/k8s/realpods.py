"""Real pods on the test control plane's real nodes, with the lab's node agents on them.

Shared by tests/k8s/test_real_moves.py and bench/k8s_move.py: the node agents (the same
Celery worker as on the lab, in each node's network namespace, told where the node's
containerd and kubelet keep their pods), both federation backends placing the reference
images' pods, and a UDP echo with a probe client deployed as real pods and linked by an
NSM-style VxLAN link that the node agents plumb into both pods.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from dataplane.cri import CriPods
from dataplane.lab import topology
from dataplane.lab.pods import kube_pod_spec
from mobility.backends.kube.client import KubeClient
from mobility.backends.kube.karmada import KarmadaFederation
from mobility.backends.kube.kubefed import KubeFedFederation
from mobility.backends.kube.objects import INSTANCE_LABEL
from mobility.backends.lab import AgentWiring, RelayStateAgents
from mobility.deploying import link_identity
from mobility.models import (
    IMAGE_WORKLOAD,
    Cluster,
    ContainerSpec,
    Instance,
    Link,
    LinkEnd,
    Node,
    Params,
    Port,
    Service,
)
from mobility.node_ops import Ping, Resume
from mobility.ports import Federation
from mobility.settings import Settings
from mobility.store import Registry
from tests.conftest import RedisServer
from tests.integration.celery_binding import celery_bound_to
from tests.k8s.conftest import DOMAIN, NAMESPACE, client
from tests.k8s.controlplane import ControlPlane
from tests.k8s.nodes import HOST_IP, UNDERLAY, Forwarder, RealNode
from workers.agents import CeleryNodeAgent
from workers.routing import node_queue

KARMADA_NAMESPACE = "karmada-moves"
RATE = 500  # the probe's requests per second


@dataclass
class RealLab:
    cp: ControlPlane
    registry: Registry
    wiring: AgentWiring
    agent: CeleryNodeAgent
    clusters: dict[str, Cluster]
    kubefed: KubeFedFederation
    karmada: KarmadaFederation | None
    state_agents: RelayStateAgents
    agents_url: str  # Redis as the node agents and the pods' state relays reach it

    def settings(self) -> Settings:
        """The engine's settings here: the state channel on the address the relays reach."""
        return Settings(ready_timeout_s=120.0, lease_ttl_s=5.0,
                        state_redis_url=self.agents_url)  # type: ignore[arg-type]

    def federation(self, backend: str) -> Federation:
        if backend == "kubefed":
            return self.kubefed
        assert self.karmada is not None, "this lab has no Karmada control plane"
        return self.karmada

    def namespace(self, backend: str) -> str:
        return NAMESPACE if backend == "kubefed" else KARMADA_NAMESPACE

    def node(self, member: str, index: int = 0) -> Node:
        return self.clusters[member].nodes[index]


def _plan(cp: ControlPlane) -> topology.LabPlan:
    """The real nodes as a lab plan, which is what a node agent reads its node from."""
    nodes = list(cp.real_nodes.values())
    return topology.LabPlan(
        name=cp.prefix, underlay=str(UNDERLAY), host_ifname=cp.underlay_bridge, host_ip=HOST_IP,
        router_ip=HOST_IP, router_namespace="", clusters=tuple(
            topology.ClusterPlan(name=m, subnet=str(UNDERLAY), gateway=HOST_IP, mtu=1500,
                                 bridge=cp.underlay_bridge) for m in cp.members),
        nodes=tuple(topology.NodePlan(
            cluster=n.cluster, name=n.name, namespace=n.namespace, underlay_ip=n.underlay_ip,
            gateway=HOST_IP, pod_subnet=n.pod_cidr, pod_gateway=n.pod_gateway, mtu=1500,
            router_port=n.host_ifname) for n in nodes))


@contextlib.contextmanager
def real_lab(cp: ControlPlane, *, karmada: KubeClient | None) -> Iterator[RealLab]:
    """Node agents on every real node, a Redis of its own on loopback (the registry, the
    broker, the state channel: database 0, as a stack's, since a move's state user may not
    SELECT), which the agents and the pods' state relays reach through a forwarder on the
    underlay bridge, and both federation backends (Karmada's only with a ``karmada``
    client)."""
    redis_dir = cp.workdir / "real-lab-redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(redis_dir)
    redis_base, redis_port, db = server.url.rsplit("/", 1)[0], server.port, 0
    conn = redis.Redis.from_url(f"{redis_base}/{db}")
    registry = Registry(conn)
    forwarder = Forwarder(HOST_IP, redis_port)  # Redis, seen from the node namespaces
    seen_from_nodes = redis_base.replace("127.0.0.1", HOST_IP).rsplit(":", 1)[0]
    agent_url = f"{seen_from_nodes}:{forwarder.port}/{db}"
    plan = _plan(cp)
    topology.save_plan(plan)
    pids = []
    try:
        for n in cp.real_nodes.values():
            proc = cp._spawn(f"agent-{n.name}", [
                "nsenter", f"--net=/run/netns/{n.namespace}", sys.executable, "-m", "celery",
                "-A", "workers.app", "worker", "-Q", node_queue(n.cluster, n.name), "-P", "solo",
                "-n", f"agent-{n.name}@{cp.prefix}", "--without-gossip", "--without-mingle",
                "-l", "INFO",
            ], env={"MOBILITY_REDIS_URL": agent_url, "MOBILITY_ENV_FILE": os.devnull,
                    "MOBILITY_LAB_NAME": cp.prefix, "MOBILITY_NODE": f"{n.cluster}/{n.name}",
                    "MOBILITY_CRI_ADDRESS": str(n.paths.address),
                    "MOBILITY_KUBELET_ROOT": str(n.run_dir / "kubelet")})
            pids.append(proc.pid)
        clusters = {m: Cluster(name=m, nodes=tuple(
            Node(name=n.name, cluster=m, underlay_ip=n.underlay_ip)
            for n in cp.real_nodes.values() if n.cluster == m)) for m in cp.members}
        for c in clusters.values():
            registry.put_cluster(c)
        with celery_bound_to(f"{redis_base}/{db}"):
            agent = CeleryNodeAgent()
            for node in (n for c in clusters.values() for n in c.nodes):
                deadline = time.monotonic() + 60
                while True:
                    try:
                        agent.call(node, Ping(), timeout=2)
                        break
                    except Exception as e:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"the node agent of {node.name} never "
                                                 f"answered:\n{cp.log('agent-' + node.name)}"
                                                 ) from e
            kubefed = KubeFedFederation(host=client(cp, "host"), namespace=NAMESPACE,
                                        domain=DOMAIN, pod_spec_for=kube_pod_spec,
                                        removal_timeout_s=60)
            karmada_fed = None if karmada is None else KarmadaFederation(
                karmada=karmada, namespace=KARMADA_NAMESPACE, domain=DOMAIN,
                pod_spec_for=kube_pod_spec, removal_timeout_s=60,
                members=lambda m: client(cp, m))
            wiring = AgentWiring(agent, registry.clusters, call_timeout=20)
            yield RealLab(cp=cp, registry=registry, wiring=wiring, agent=agent,
                          clusters=clusters, kubefed=kubefed, karmada=karmada_fed,
                          state_agents=RelayStateAgents(agent, registry.clusters,
                                                        call_timeout=20),
                          agents_url=agent_url)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            cp.reap(pid, timeout=10)
        forwarder.close()
        conn.close()
        server.stop()
        for entry in Path("/run/netns").glob(f"{cp.prefix}-pod-*"):
            entry.unlink()  # adopted names: symlinks to the kubelet's namespaces
        shutil.rmtree(plan.run_dir, ignore_errors=True)


def cri_of(lab: RealLab, member: str, index: int = 0) -> tuple[RealNode, CriPods]:
    node = lab.cp.real_node(member, index)
    return node, CriPods(node.runtime(), node.run_dir / "kubelet")


def progress(lab: RealLab, member: str, pod: str) -> dict[str, Any]:
    node, cri = cri_of(lab, member, 1)  # the client's node
    found = cri.find(pod)
    if found is None:
        raise AssertionError(f"{pod} has no sandbox on {node.name}")
    try:
        return dict(json.loads((cri.io_dir(found) / "progress.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {"received": 0, "answered": 0, "sent": 0}


def wait_replies(lab: RealLab, member: str, pod: str, n: int, timeout: float = 30,
                 key: str = "received") -> None:
    """Until the client's ``key`` count (``received``; a session client's ``answered``)
    grew by ``n``."""
    start = int(progress(lab, member, pod).get(key, 0))
    deadline = time.monotonic() + timeout
    while int(progress(lab, member, pod).get(key, 0)) < start + n:
        if time.monotonic() > deadline:
            raise AssertionError(f"the probe {pod} gets no replies")
        time.sleep(0.1)


def member_pods(lab: RealLab, member: str, pod: str, namespace: str) -> list[dict[str, Any]]:
    return lab.cp.servers[member].items(f"/api/v1/namespaces/{namespace}/pods",
                                        labelSelector=f"{INSTANCE_LABEL}={pod}")


@dataclass
class Pair:
    """An echo service in member-a and a probe client on member-a's second node (a link's
    ends never share a node: one VNI per node's VxLAN socket), linked, the client sending."""

    lab: RealLab
    backend: str
    echo: str
    probe: str
    link: Link
    client_at: Instance
    stateful: bool = False
    placed: list[Instance] = field(default_factory=list)

    @property
    def fed(self) -> Federation:
        return self.lab.federation(self.backend)

    def progress(self) -> dict[str, Any]:
        return progress(self.lab, "member-a", self.client_at.pod)

    def wait_replies(self, n: int, timeout: float = 30) -> None:
        wait_replies(self.lab, "member-a", self.client_at.pod, n, timeout,
                     key="answered" if self.stateful else "received")

    def remove(self) -> None:
        for inst in reversed(self.placed):
            with contextlib.suppress(Exception):
                self.fed.unplace(instance=inst)
        for name in (self.echo, self.probe):
            with contextlib.suppress(Exception):
                self.lab.registry.delete_service(name)
        with contextlib.suppress(Exception):
            self.lab.registry.delete_link(self.link.id)


COUNTER_IMAGE = "counter:1"  # examples/counter, the README's own app


def import_counter_image(cp: ControlPlane) -> str:
    """Build the example app's image (examples/counter on the reference base image, as
    ``mobility image build`` does) and import it on every real node; returns its name."""
    from dataplane.images import build_archive
    from dataplane.lab import images as lab_images
    from tests.conftest import REPO

    lab_images.build_reference()
    base = lab_images.images_dir() / lab_images.archive_name(lab_images.BASE_IMAGE)
    archive = build_archive(cp.workdir / "counter.tar", name=COUNTER_IMAGE,
                            layers=[REPO / "examples" / "counter" / "rootfs"], base=base,
                            entrypoint=["python3", "/app/counter.py"])
    for node in cp.real_nodes.values():
        node.import_images([archive])
    return COUNTER_IMAGE


def deploy_pair(lab: RealLab, backend: str, tag: str, *, state_mb: float | None = None,
                image: str | None = None) -> Pair:
    """Deployed by hand, in the order a kubelet's pods need: a pod's network namespace exists
    only once it runs, so both run (the client paused) before they are wired; then the
    client is resumed. Instances are named as the engine names them (``<service>-<n>``).
    With ``state_mb``, a stateful session service of that much state (its state changing:
    1 % a second) and a session client that checks every counter it gets back."""
    reg, fed = lab.registry, lab.federation(backend)
    echo, probe = f"echo-{tag}", f"client-{tag}"
    echo_at = Instance(cluster="member-a", node=lab.node("member-a").name,
                       pod=f"{echo}-{reg.next_pod_index()}")
    client_at = Instance(cluster="member-a", node=lab.node("member-a", 1).name,
                         pod=f"{probe}-{reg.next_pod_index()}")
    (mac_e, ip_e), (mac_c, ip_c) = link_identity(reg.next_link_block())
    link = Link(id=f"{probe}.{echo}", vni=reg.next_vni(),
                ends=(LinkEnd(service=probe, ifname="nsm-1", mac=mac_c, ip=ip_c),
                      LinkEnd(service=echo, ifname="nsm-1", mac=mac_e, ip=ip_e)))
    client_params: Params = {"target": f"{ip_e}:7000", "rate": RATE, "paused": True}
    stateful = state_mb is not None or image is not None
    server, client_workload = ("sessions", "session-probe") if stateful else ("echo", "probe")
    server_params: Params = {"port": 7000}
    container = ContainerSpec()
    if image is not None:  # a user's app serving the state SDK (examples/counter)
        server, server_params = IMAGE_WORKLOAD, {}
        container = ContainerSpec(image=image, ports=(Port(port=7000, protocol="udp"),),
                                  state="sdk")
    elif stateful:
        server_params.update(state_mb=float(state_mb or 0), dirty_rate=1.0)
    pair = Pair(lab=lab, backend=backend, echo=echo, probe=probe, link=link,
                client_at=client_at, stateful=stateful)
    try:
        for inst, workload, params, spec in ((echo_at, server, server_params, container),
                                             (client_at, client_workload, client_params,
                                              ContainerSpec())):
            fed.place(instance=inst, workload=workload, params=params, start=True,
                      container=spec)
            pair.placed.append(inst)
        for inst in (echo_at, client_at):
            fed.wait_ready(instance=inst, timeout=120)
        reg.put_link(link)
        reg.put_service(Service(name=echo, workload=server, params=server_params,
                                container=container,
                                instance=echo_at, links=[link.id]), create=True)
        reg.put_service(Service(name=probe, workload=client_workload, params=client_params,
                                instance=client_at, links=[link.id]), create=True)
        lab.wiring.create_end(link=link, service=probe, instance=client_at,
                              peer_instance=echo_at)
        lab.wiring.create_end(link=link, service=echo, instance=echo_at,
                              peer_instance=client_at)
        lab.agent.call(lab.node("member-a", 1), Resume(pod=client_at.pod), timeout=20)
        pair.wait_replies(RATE)
    except BaseException:
        pair.remove()
        raise
    return pair
