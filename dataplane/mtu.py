"""MTU of an overlay link, computed from the underlay, never hand-set."""

from __future__ import annotations

# Outer IP + UDP + VxLAN + inner Ethernet headers.
VXLAN_OVERHEAD_IPV4 = 50
VXLAN_OVERHEAD_IPV6 = 70


def vxlan_mtu(underlay_mtu: int, *, ipv6_underlay: bool = False) -> int:
    """The largest inner MTU that crosses ``underlay_mtu`` unfragmented."""
    overhead = VXLAN_OVERHEAD_IPV6 if ipv6_underlay else VXLAN_OVERHEAD_IPV4
    mtu = underlay_mtu - overhead
    if mtu < 68:
        raise ValueError(f"underlay MTU {underlay_mtu} leaves {mtu} for the overlay (< 68)")
    return mtu
