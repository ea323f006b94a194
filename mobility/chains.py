"""Service chains: client -> middleboxes -> server, as a sequence of point-to-point links.

Link ``i`` joins element ``i`` and ``i + 1``. Every element routes the chain's far ends (the
client's and the server's link addresses) through its neighbour on the way there, so traffic
from the client to the server crosses every middlebox and comes back the same way. The routes
use only link addresses, which never change when an element moves: a moved element gets the
same routes, and its neighbours' routes stay as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mobility.errors import Invalid
from mobility.models import Link

NAME = re.compile(r"[a-z][a-z0-9-]{0,10}")
MAX_ELEMENTS = 8


@dataclass(frozen=True)
class Element:
    name: str  # the element's name within the chain ("fw"); its service is "<chain>-<name>"
    workload: str
    cluster: str


@dataclass(frozen=True)
class Chain:
    name: str
    elements: tuple[Element, ...]

    def service(self, element: str) -> str:
        return f"{self.name}-{element}"

    @property
    def services(self) -> list[str]:
        return [self.service(e.name) for e in self.elements]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name,
                "elements": [{"name": e.name, "workload": e.workload, "cluster": e.cluster}
                             for e in self.elements]}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Chain:
        raw = d["elements"]
        assert isinstance(raw, list)
        return cls(name=str(d["name"]),
                   elements=tuple(Element(name=str(e["name"]), workload=str(e["workload"]),
                                          cluster=str(e["cluster"])) for e in raw))


def validate(chain: Chain) -> Chain:
    """A client first (``probe``), middleboxes in between, a server last (``echo``)."""
    if not NAME.fullmatch(chain.name):
        raise Invalid(f"chain name {chain.name!r}: lowercase letters, digits and '-', "
                      "starting with a letter, at most 11 characters")
    n = len(chain.elements)
    if not 2 <= n <= MAX_ELEMENTS:
        raise Invalid(f"a chain has 2 to {MAX_ELEMENTS} elements, not {n}")
    names = [e.name for e in chain.elements]
    if len(set(names)) != n:
        raise Invalid("element names must be unique within the chain")
    for e in chain.elements:
        if not NAME.fullmatch(e.name):
            raise Invalid(f"element name {e.name!r}: lowercase letters, digits and '-', "
                          "at most 11 characters")
    if chain.elements[0].workload != "probe":
        raise Invalid("a chain starts with a client (workload 'probe')")
    if chain.elements[-1].workload != "echo":
        raise Invalid("a chain ends with a server (workload 'echo')")
    for e in chain.elements[1:-1]:
        if e.workload != "middlebox":
            raise Invalid(f"element {e.name!r}: the elements between the ends are middleboxes")
    return chain


def routes(services: list[str], links: list[Link]) -> dict[str, list[dict[str, str]]]:
    """Per service, the routes to the chain's far ends (none where the end is adjacent)."""
    if len(links) != len(services) - 1:
        raise ValueError("a chain of n elements has n - 1 links")
    client_ip = links[0].end_of(services[0]).ip
    server_ip = links[-1].end_of(services[-1]).ip
    out: dict[str, list[dict[str, str]]] = {}
    last = len(services) - 1
    for i, svc in enumerate(services):
        rs = []
        if i < last - 1:  # the server is further than the next element
            link = links[i]
            rs.append({"dst": f"{server_ip}/32", "via": link.end_of(services[i + 1]).ip,
                       "ifname": link.end_of(svc).ifname})
        if i > 1:  # the client is further than the previous element
            link = links[i - 1]
            rs.append({"dst": f"{client_ip}/32", "via": link.end_of(services[i - 1]).ip,
                       "ifname": link.end_of(svc).ifname})
        out[svc] = rs
    return out
