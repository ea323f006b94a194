"""Fixtures for the tests against a real Kubernetes control plane.

Aspects: one control plane per session (etcd, a KubeFed host, two member clusters with
controller managers, schedulers and KWOK, a spare cluster for join/unjoin, the KubeFed
controller manager), binaries from KUBEBUILDER_ASSETS or the per-machine cache (built when
missing; a failed build fails the tests, never skips them); the members joined to KubeFed
through the adapter; a real Redis for the engine's registry; teardown that stops exactly the
processes it started and checks that none is left.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from mobility.backends.kube.client import KubeClient
from mobility.backends.kube.kubefed import KubeFedFederation
from mobility.backends.kube.nsm import NsmWiring
from mobility.models import Cluster, Node
from mobility.store import Registry
from tests.conftest import RedisServer
from tests.k8s.controlplane import ControlPlane, ControlPlaneError
from tests.k8s.karmada_plane import KarmadaPlane

NAMESPACE = "mobility"
DOMAIN = "smk8s.test"
# Engine-side records of the member clusters: the KWOK node names, each with its own underlay
# address (no packet flows here; the CUTOVER check compares these addresses).
UNDERLAY = {"member-a": "198.18.1.", "member-b": "198.18.2."}


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(Path(tmp_path_factory.mktemp("k8s")))
    try:
        cp.start()
    except ControlPlaneError as e:
        pytest.fail(f"the Kubernetes control plane could not start: {e}")
    try:
        yield cp
    finally:
        procs = list(cp.procs)
        cp.stop()
        left = [name for name, proc in procs if proc.poll() is None]
        assert left == [], f"control-plane processes left running: {left}"


def client(cp: ControlPlane, context: str, *, timeout: float = 3.0) -> KubeClient:
    return KubeClient.from_kubeconfig(cp.kubeconfig, context=context, timeout=timeout)


@dataclass
class Federated:
    """The KubeFed adapter with both members joined, and the NSM wiring beside it."""

    cp: ControlPlane
    federation: KubeFedFederation
    wiring: NsmWiring
    clusters: dict[str, Cluster]


@pytest.fixture(scope="session")
def federated(control_plane: ControlPlane) -> Iterator[Federated]:
    host = client(control_plane, "host")
    fed = KubeFedFederation(host=host, namespace=NAMESPACE, domain=DOMAIN,
                            removal_timeout_s=30)
    clusters = {
        m: Cluster(name=m, nodes=tuple(
            Node(name=n, cluster=m, underlay_ip=f"{UNDERLAY[m]}{i}")
            for i, n in enumerate(control_plane.node_names(m), start=11)))
        for m in control_plane.members
    }
    for m in control_plane.members:
        fed.join(name=m, member=client(control_plane, m), ready_timeout_s=60)
    wiring = NsmWiring(registry=host, members=fed.member, clusters=lambda: clusters,
                       namespace=NAMESPACE)
    yield Federated(cp=control_plane, federation=fed, wiring=wiring, clusters=clusters)
    for spec in list(fed.instances()):  # what a failed test left placed
        with contextlib.suppress(Exception):
            fed.unplace(instance=spec.instance)


@pytest.fixture
def registry(redis_server: RedisServer) -> Iterator[Registry]:
    """The engine's registry on a real Redis (its own database, emptied for each test)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    yield Registry(conn)
    conn.flushdb()
    conn.close()


@pytest.fixture(scope="session")
def karmada_plane(control_plane: ControlPlane) -> Iterator[KarmadaPlane]:
    """Karmada's own API server, webhook, controller manager and scheduler on the control
    plane's etcd, with the member clusters joined in push mode and reported Ready."""
    kp = KarmadaPlane(control_plane)
    try:
        kp.start()
    except ControlPlaneError as e:
        pytest.fail(f"Karmada's control plane could not start: {e}")
    try:
        yield kp
    finally:
        procs = list(kp.procs)
        kp.stop()
        left = [name for name, proc in procs if proc.poll() is None]
        assert left == [], f"Karmada processes left running: {left}"
