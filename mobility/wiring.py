"""Link ends and switching, carried out by the agent of the node that holds each end."""

from __future__ import annotations

from collections.abc import Callable

from mobility.models import Cluster, Instance, Link, Node
from mobility.ports import NodeAgent


class OnNodes:
    """A port carried out by node agents: each call goes to the node holding the instance."""

    def __init__(self, agent: NodeAgent, clusters: Callable[[], dict[str, Cluster]], *,
                 call_timeout: float) -> None:
        self.agent = agent
        self.clusters = clusters
        self.call_timeout = call_timeout

    def _node(self, instance: Instance) -> Node:
        return self.clusters()[instance.cluster].node(instance.node)


class AgentWiring(OnNodes):

    def _underlay_mtu(self, *instances: Instance) -> int:
        """The smallest underlay MTU on the link's path: both ends must fit through it."""
        clusters = self.clusters()
        return min(clusters[i.cluster].underlay_mtu for i in instances)

    def create_end(self, *, link: Link, service: str, instance: Instance,
                   peer_instance: Instance) -> None:
        mine, peer = link.end_of(service), link.peer_of(service)
        self.agent.call(self._node(instance), "create_end", {
            "pod": instance.pod, "ifname": mine.ifname, "vni": link.vni, "mac": mine.mac,
            "cidr": mine.cidr, "peer_mac": peer.mac, "peer_ip": peer.ip,
            "peer_node_ip": self._node(peer_instance).underlay_ip,
            "underlay_mtu": self._underlay_mtu(instance, peer_instance),
        }, timeout=self.call_timeout)

    def delete_end(self, *, link: Link, service: str, instance: Instance) -> None:
        self.agent.call(self._node(instance), "delete_end",
                        {"pod": instance.pod, "ifname": link.end_of(service).ifname},
                        timeout=self.call_timeout)

    def switch(self, *, link: Link, moved: str, peer_instance: Instance,
               to_instance: Instance) -> None:
        peer_end = link.peer_of(moved)
        self.agent.call(self._node(peer_instance), "switch", {
            "pod": peer_instance.pod, "ifname": peer_end.ifname,
            "mac": link.end_of(moved).mac, "node_ip": self._node(to_instance).underlay_ip,
        }, timeout=self.call_timeout)

    def set_routes(self, *, instance: Instance, routes: list[dict[str, str]]) -> None:
        if routes:
            self.agent.call(self._node(instance), "set_routes",
                            {"pod": instance.pod, "routes": routes}, timeout=self.call_timeout)

    def points_to(self, *, link: Link, moved: str, peer_instance: Instance) -> str | None:
        peer_end = link.peer_of(moved)
        result = self.agent.call(self._node(peer_instance), "fdb_dst", {
            "pod": peer_instance.pod, "ifname": peer_end.ifname, "mac": link.end_of(moved).mac,
        }, timeout=self.call_timeout)
        return None if result is None else str(result)
