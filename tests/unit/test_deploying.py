"""Link identities and name checks in mobility.deploying.

Aspects: link_identity gives each block distinct MACs and IPs, both ends in one /30 inside
169.254.1.0 .. 169.254.254.255 (the reserved first and last /24 of 169.254.0.0/16 untouched),
locally administered unicast MACs; block 0 and blocks past MAX_BLOCKS raise Conflict.
Deployer.deploy refuses a bad service name with Invalid before it touches the registry or any
other collaborator (all of them are tripwires here).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, cast

import pytest

from mobility.deploying import MAX_BLOCKS, Deployer, link_identity
from mobility.errors import Conflict, Invalid
from mobility.ports import Federation, Wiring
from mobility.settings import Settings
from mobility.store import Registry

FIRST = ipaddress.IPv4Address("169.254.1.0")
LAST = ipaddress.IPv4Address("169.254.254.255")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def test_first_block() -> None:
    assert link_identity(1) == (
        ("02:6d:00:00:01:01", "169.254.1.1"),
        ("02:6d:00:00:01:02", "169.254.1.2"),
    )


def test_max_blocks_fills_exactly_the_usable_range() -> None:
    # 169.254.1.0 .. 169.254.254.255 is 254 /24s of 64 /30s each.
    assert MAX_BLOCKS == 254 * 64


@pytest.mark.parametrize(
    "block", [1, 2, 63, 64, 65, 255, 256, 257, 4096, MAX_BLOCKS - 1, MAX_BLOCKS]
)
def test_both_ends_share_one_slash30_inside_the_range(block: int) -> None:
    (mac_a, ip_a), (mac_b, ip_b) = link_identity(block)
    a, b = ipaddress.IPv4Address(ip_a), ipaddress.IPv4Address(ip_b)
    net = ipaddress.IPv4Network(f"{ip_a}/30", strict=False)
    assert b in net
    assert {a, b} == set(net.hosts())  # neither is the /30's network or broadcast address
    assert net.network_address >= FIRST and net.broadcast_address <= LAST
    assert mac_a != mac_b and ip_a != ip_b


def test_last_block_ends_at_169_254_254_254() -> None:
    (_, ip_a), (_, ip_b) = link_identity(MAX_BLOCKS)
    assert (ip_a, ip_b) == ("169.254.254.253", "169.254.254.254")


def test_all_blocks_are_distinct_and_well_formed() -> None:
    macs: set[str] = set()
    ips: set[str] = set()
    for block in range(1, MAX_BLOCKS + 1):
        for mac, ip in link_identity(block):
            macs.add(mac)
            ips.add(ip)
            assert MAC_RE.match(mac), mac
            first = int(mac.split(":")[0], 16)
            assert first == 0x02  # locally administered (bit 1), unicast (bit 0 clear)
    assert len(macs) == len(ips) == 2 * MAX_BLOCKS


@pytest.mark.parametrize("block", [0, -1, MAX_BLOCKS + 1, 10**6])
def test_blocks_outside_the_range_are_refused(block: int) -> None:
    with pytest.raises(Conflict, match="no link addresses left"):
        link_identity(block)


# --- Deployer.deploy: name checks happen first ---


class Touched(Exception):
    """A collaborator was used although the call should have stopped before it."""


class Tripwire:
    def __init__(self, role: str) -> None:
        self.role = role

    def __getattr__(self, name: str) -> Any:
        raise Touched(f"{self.role}.{name} was used")


def deployer() -> Deployer:
    return Deployer(
        registry=cast(Registry, Tripwire("registry")),
        federation=cast(Federation, Tripwire("federation")),
        wiring=cast(Wiring, Tripwire("wiring")),
        settings=cast(Settings, Tripwire("settings")),
    )


@pytest.mark.parametrize(
    "name", ["", "Web", "web_1", "web.1", "1web", "-web", "web 1", "a" * 24, "wéb", "web/x"]
)
def test_bad_names_are_invalid_before_any_registry_use(name: str) -> None:
    with pytest.raises(Invalid, match="service name"):
        deployer().deploy(name=name, workload="echo", params={}, cluster="core", peers=[])


def test_longest_good_name_passes_the_name_check() -> None:
    # The workload check comes next, and also runs before the registry: a 23-character name
    # is accepted and the call stops at the unknown workload instead.
    with pytest.raises(Invalid, match="unknown workload"):
        deployer().deploy(name="a" * 23, workload="nope", params={}, cluster="core", peers=[])


def test_bad_params_are_invalid_before_any_registry_use() -> None:
    with pytest.raises(Invalid, match="'port'"):
        deployer().deploy(name="web", workload="echo", params={"port": 0}, cluster="core", peers=[])


def test_name_with_trailing_newline_is_invalid() -> None:
    with pytest.raises(Invalid, match="service name"):
        deployer().deploy(name="web\n", workload="echo", params={}, cluster="core", peers=[])
