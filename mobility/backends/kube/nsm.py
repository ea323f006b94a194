"""Network Service Mesh objects: the client annotation, NetworkServices (with the ``matches``
that route a service chain) and NetworkServiceEndpoints, and a ``Wiring`` that keeps them.

What NSM itself would do with them (forwarders creating the VxLAN interfaces) is not done here:
on Kubernetes the links are NSM's business, and these objects are what NSM reads. The lab's
``AgentWiring`` makes the interfaces itself.

Where the objects live, as NSM keeps them:
- a **NetworkServiceEndpoint** per link end, in the cluster of the instance that holds the end
  (NSM's registry-k8s stores endpoints in their own cluster), owned by the instance's
  Deployment there: when the instance goes, the garbage collector takes its endpoints;
- a **NetworkService** per link, in a registry cluster that both ends reach (NSM's floating
  interdomain registry; the KubeFed host in the tests). Its ``matches`` say where each side's
  traffic goes: ``source_selector`` names the sending service, the route's
  ``destination_selector`` the receiving service *and instance*. Make-before-break: the new end
  is registered first (WIRE), and only CUTOVER moves the route to it.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mobility.backends.kube.client import KubeClient, Obj
from mobility.backends.kube.objects import INSTANCE_LABEL, NSM_ANNOTATION, SERVICE_LABEL
from mobility.backends.kube.objects import client_annotation as client_annotation
from mobility.errors import FederationError
from mobility.models import Cluster, Instance, Link

if TYPE_CHECKING:
    from mobility.ports import Wiring

log = logging.getLogger(__name__)

GROUP_VERSION = "networkservicemesh.io/v1"
API = f"/apis/{GROUP_VERSION}"
ANNOTATION = NSM_ANNOTATION
LINK_LABEL = "mobility.io/link"
NODE_IP_ANNOTATION = "mobility.io/node-ip"
IFNAME_ANNOTATION = "mobility.io/ifname"
ROUTES_ANNOTATION = "mobility.io/routes"


def chain_matches(chain: Sequence[str], *, label: str = "app") -> list[Obj]:
    """``matches`` that route a chain: traffic from element *i* goes to element *i + 1*.

    ``["client", "mb1", "mb2", "server"]`` gives client -> mb1, mb1 -> mb2, mb2 -> server.
    """
    if len(chain) < 2 or len(set(chain)) != len(chain):
        raise ValueError("a chain needs at least two distinct elements")
    return [{"source_selector": {label: a}, "routes": [{"destination_selector": {label: b}}]}
            for a, b in itertools.pairwise(chain)]


def network_service(name: str, *, namespace: str, matches: list[Obj],
                    payload: str = "ETHERNET", labels: dict[str, str] | None = None) -> Obj:
    return {"apiVersion": GROUP_VERSION, "kind": "NetworkService",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "spec": {"payload": payload, "matches": matches}}


def chain_service(name: str, chain: Sequence[str], *, namespace: str,
                  label: str = "app") -> Obj:
    """A NetworkService routing ``chain`` from one middlebox label to the next."""
    return network_service(name, namespace=namespace, matches=chain_matches(chain, label=label))


def network_service_endpoint(name: str, *, namespace: str, network_service: str,
                             labels: dict[str, str], url: str,
                             annotations: dict[str, str] | None = None,
                             owner: Obj | None = None) -> Obj:
    """A NetworkServiceEndpoint serving ``network_service`` with ``labels`` (what routes select)."""
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(labels),
                 "annotations": dict(annotations or {})}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": GROUP_VERSION, "kind": "NetworkServiceEndpoint", "metadata": meta,
            "spec": {"network_service_names": [network_service],
                     "network_service_labels": {network_service: {"labels": dict(labels)}},
                     "url": url}}


def apply(client: KubeClient, obj: Obj) -> Obj:
    """Create ``obj`` or replace its spec, labels and annotations (409s retried)."""
    meta = obj["metadata"]
    plural = "networkservices" if obj["kind"] == "NetworkService" else "networkserviceendpoints"
    collection = f"{API}/namespaces/{meta['namespace']}/{plural}"
    created = client.create(collection, obj)
    if created is not None:
        return created

    def same(cur: Obj) -> bool:
        changed = False
        for key in ("labels", "annotations"):
            if (cur["metadata"].get(key) or {}) != (meta.get(key) or {}):
                cur["metadata"][key] = dict(meta.get(key) or {})
                changed = True
        if cur.get("spec") != obj["spec"]:
            cur["spec"] = obj["spec"]
            changed = True
        return changed

    stored = client.update(f"{collection}/{meta['name']}", same)
    if stored is None:
        raise FederationError(f"{meta['name']} vanished while being applied", retryable=True)
    return stored


def link_service_name(link: Link) -> str:
    """The link's NetworkService: its id as a DNS label, made unique by its VNI."""
    return f"{link.id.replace('.', '-')}-{link.vni}"


class NsmWiring:
    """The ``Wiring`` port on Kubernetes: link ends are NSM endpoints, switching is a route.

    ``registry`` holds the NetworkServices; ``members(cluster)`` reaches the cluster of an
    instance (``KubeFedFederation.member``); ``clusters()`` gives the engine's records, whose
    node addresses are the underlay addresses the engine checks at CUTOVER.
    """

    def __init__(self, *, registry: KubeClient, members: Callable[[str], KubeClient],
                 clusters: Callable[[], dict[str, Cluster]], namespace: str = "mobility",
                 owner_timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
        self.registry = registry
        self.members = members
        self.clusters = clusters
        self.namespace = namespace
        self.owner_timeout_s = owner_timeout_s
        self.poll_s = poll_s

    # --- paths ---

    def _ns_path(self, link: Link) -> str:
        return f"{API}/namespaces/{self.namespace}/networkservices/{link_service_name(link)}"

    def _nse_collection(self) -> str:
        return f"{API}/namespaces/{self.namespace}/networkserviceendpoints"

    @staticmethod
    def endpoint_name(link: Link, instance: Instance) -> str:
        return f"{link_service_name(link)}-{instance.pod}"

    # --- the port ---

    def create_end(self, *, link: Link, service: str, instance: Instance,
                   peer_instance: Instance) -> None:
        """Register ``service``'s end of the link as an endpoint, and route to it if unrouted.

        A route that exists already (to the instance being moved away from) is left alone:
        the new end carries no traffic before CUTOVER.
        """
        mine = link.end_of(service)
        peer = link.peer_of(service)
        node = self.clusters()[instance.cluster].node(instance.node)
        member = self.members(instance.cluster)
        ns_name = link_service_name(link)
        apply(member, network_service_endpoint(
            self.endpoint_name(link, instance), namespace=self.namespace,
            network_service=ns_name,
            labels={SERVICE_LABEL: service, INSTANCE_LABEL: instance.pod, LINK_LABEL: ns_name},
            url=f"kernel://{node.underlay_ip}/{mine.ifname}",
            annotations={NODE_IP_ANNOTATION: node.underlay_ip, "mobility.io/mac": mine.mac,
                         "mobility.io/ip": mine.cidr, "mobility.io/vni": str(link.vni),
                         IFNAME_ANNOTATION: mine.ifname},
            owner=self._owner(member, service, instance)))

        routes = {peer.service: (service, instance.pod),
                  service: (peer.service, peer_instance.pod)}

        def add_missing(obj: Obj) -> bool:
            matches = obj["spec"].setdefault("matches", [])
            have = {m.get("source_selector", {}).get(SERVICE_LABEL) for m in matches}
            missing = [src for src in routes if src not in have]
            for src in missing:
                matches.append(self._match(src, *routes[src]))
            return bool(missing)

        if self.registry.update(self._ns_path(link), add_missing) is None:
            body = network_service(ns_name, namespace=self.namespace, matches=[],
                                   labels={LINK_LABEL: ns_name})
            add_missing(body)
            if self.registry.create(
                    f"{API}/namespaces/{self.namespace}/networkservices", body) is None:
                self.registry.update(self._ns_path(link), add_missing)

    def delete_end(self, *, link: Link, service: str, instance: Instance) -> None:
        """Unregister the end; a link whose route led to it is gone, so its service goes too.

        An unreachable member keeps the endpoint until it answers again; it is owned by the
        instance's Deployment there, so it cannot outlive the instance.
        """
        try:
            self.members(instance.cluster).delete(
                f"{self._nse_collection()}/{self.endpoint_name(link, instance)}")
        except FederationError as e:
            if not e.retryable:
                raise
            log.warning("endpoint %s in %s left to the garbage collector: %s",
                        self.endpoint_name(link, instance), instance.cluster, e)
        ns = self.registry.get(self._ns_path(link))
        if ns is None:
            return
        for m in ns["spec"].get("matches") or []:
            for r in m.get("routes") or []:
                sel = r.get("destination_selector") or {}
                if sel.get(SERVICE_LABEL) == service and sel.get(INSTANCE_LABEL) == instance.pod:
                    self.registry.delete(self._ns_path(link))
                    return

    def switch(self, *, link: Link, moved: str, peer_instance: Instance,
               to_instance: Instance) -> None:
        """Route the peer's traffic on the link to ``to_instance``'s end (one object write)."""
        peer = link.peer_of(moved).service

        def reroute(obj: Obj) -> bool:
            matches = [m for m in obj["spec"].get("matches") or []
                       if m.get("source_selector", {}).get(SERVICE_LABEL) != peer]
            want = self._match(peer, moved, to_instance.pod)
            if want in (obj["spec"].get("matches") or []):
                return False
            obj["spec"]["matches"] = [*matches, want]
            return True

        if self.registry.update(self._ns_path(link), reroute) is None:
            raise FederationError(f"link {link.id} has no NetworkService to switch")

    def set_routes(self, *, instance: Instance, routes: list[dict[str, str]]) -> None:
        """Routes inside the instance (a chain's far ends through its neighbours).

        In NSM these are the connection's IP-context routes that the forwarder installs in
        the pod; here each link end's endpoint carries the routes through its interface, as
        JSON ``[{"dst", "via"}]`` in its ``mobility.io/routes`` annotation.
        """
        if not routes:
            return
        by_ifname: dict[str, list[dict[str, str]]] = {}
        for r in routes:
            by_ifname.setdefault(r["ifname"], []).append({"dst": r["dst"], "via": r["via"]})
        member = self.members(instance.cluster)
        items = member.request("GET", self._nse_collection(),
                               query={"labelSelector": f"{INSTANCE_LABEL}={instance.pod}"}
                               ).get("items") or []
        ends = {(i["metadata"].get("annotations") or {}).get(IFNAME_ANNOTATION):
                str(i["metadata"]["name"]) for i in items}
        for ifname, rs in sorted(by_ifname.items()):
            name = ends.get(ifname)
            if name is None:
                raise FederationError(f"{instance.pod} has no link end on {ifname} to route "
                                      "through")
            value = json.dumps(rs, sort_keys=True)

            def annotate(obj: Obj, value: str = value) -> bool:
                notes = obj["metadata"].setdefault("annotations", {})
                if notes.get(ROUTES_ANNOTATION) == value:
                    return False
                notes[ROUTES_ANNOTATION] = value
                return True

            if member.update(f"{self._nse_collection()}/{name}", annotate) is None:
                raise FederationError(f"endpoint {name} vanished while routing", retryable=True)

    def points_to(self, *, link: Link, moved: str, peer_instance: Instance) -> str | None:
        """The node address of the endpoint the peer's route selects now, read back."""
        peer = link.peer_of(moved).service
        ns = self.registry.get(self._ns_path(link))
        if ns is None:
            return None
        for m in ns["spec"].get("matches") or []:
            if m.get("source_selector", {}).get(SERVICE_LABEL) != peer:
                continue
            for r in m.get("routes") or []:
                sel = r.get("destination_selector") or {}
                pod = sel.get(INSTANCE_LABEL)
                if sel.get(SERVICE_LABEL) != moved or not pod:
                    continue
                return self._endpoint_node_ip(link, moved, str(pod))
        return None

    # --- helpers ---

    @staticmethod
    def _match(source: str, dest: str, dest_pod: str) -> Obj:
        return {"source_selector": {SERVICE_LABEL: source},
                "routes": [{"destination_selector": {SERVICE_LABEL: dest,
                                                     INSTANCE_LABEL: dest_pod}}]}

    def _endpoint_node_ip(self, link: Link, service: str, pod: str) -> str | None:
        """Find the endpoint of ``pod`` on the link in whichever cluster holds it."""
        name = link_service_name(link)
        for cluster in sorted(self.clusters()):
            try:
                items = self.members(cluster).request(
                    "GET", self._nse_collection(),
                    query={"labelSelector": f"{LINK_LABEL}={name},{INSTANCE_LABEL}={pod},"
                                            f"{SERVICE_LABEL}={service}"}).get("items") or []
            except FederationError as e:
                log.debug("no endpoint lookup in %s: %s", cluster, e)
                continue
            for item in items:
                ip = (item["metadata"].get("annotations") or {}).get(NODE_IP_ANNOTATION)
                if ip:
                    return str(ip)
        return None

    def _owner(self, member: KubeClient, service: str, instance: Instance) -> Obj:
        """An owner reference to the instance's Deployment (waited for: KubeFed may lag)."""
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{service}"
        deadline = time.monotonic() + self.owner_timeout_s
        while True:
            dep = member.get(path)
            labels = ((dep or {}).get("spec", {}).get("template", {}).get("metadata", {})
                      .get("labels") or {})
            if dep is not None and labels.get(INSTANCE_LABEL) == instance.pod:
                return {"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": dep["metadata"]["name"], "uid": dep["metadata"]["uid"]}
            if time.monotonic() > deadline:
                raise FederationError(f"no Deployment of {instance.pod} in {instance.cluster} "
                                      f"after {self.owner_timeout_s}s to own its endpoint",
                                      retryable=True)
            time.sleep(self.poll_s)


if TYPE_CHECKING:  # mypy checks here that the adapter implements the engine's port

    def _is_wiring(adapter: NsmWiring) -> Wiring:
        return adapter
