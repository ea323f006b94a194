"""Overlay MTU in dataplane.mtu.vxlan_mtu.

Aspects: 50 bytes of VxLAN overhead over IPv4, 70 over IPv6; the smallest underlay that still
leaves 68 bytes (the IPv4 minimum) for the overlay; ValueError below it.
"""

from __future__ import annotations

import pytest

from dataplane.mtu import vxlan_mtu


@pytest.mark.parametrize(("underlay", "overlay"), [(1500, 1450), (9000, 8950), (1280, 1230)])
def test_ipv4_underlay(underlay: int, overlay: int) -> None:
    assert vxlan_mtu(underlay) == overlay


@pytest.mark.parametrize(("underlay", "overlay"), [(1500, 1430), (9000, 8930)])
def test_ipv6_underlay(underlay: int, overlay: int) -> None:
    assert vxlan_mtu(underlay, ipv6_underlay=True) == overlay


def test_smallest_usable_underlay() -> None:
    assert vxlan_mtu(118) == 68
    assert vxlan_mtu(138, ipv6_underlay=True) == 68


@pytest.mark.parametrize(
    ("underlay", "ipv6"), [(117, False), (137, True), (0, False), (-1500, False)]
)
def test_too_small_underlay_raises(underlay: int, ipv6: bool) -> None:
    with pytest.raises(ValueError, match="< 68"):
        vxlan_mtu(underlay, ipv6_underlay=ipv6)
