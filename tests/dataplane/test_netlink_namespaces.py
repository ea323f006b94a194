"""The netlink adapter's way into a namespace: a thread of its own, not a forked child.

Aspects: ``create_namespace`` makes a named namespace with its loopback up, and again is a
no-op, and neither it nor ``Netlink(ns)`` forks; ``Netlink(ns)`` sees and changes that
namespace only (a veth made from the host side with its peer moved in shows inside, not on the
host), from any calling thread, while the caller's own thread stays in its namespace; a missing
namespace is NamespaceNotFound; many opens leave no descriptor behind; ``delete_namespace``
removes it.
"""

from __future__ import annotations

import os
import threading

import pytest

from dataplane import netlink
from dataplane.errors import NamespaceNotFound
from dataplane.netlink import Netlink
from tests.conftest import require_root, unique_prefix

FORKS = [0]
os.register_at_fork(before=lambda: FORKS.__setitem__(0, FORKS[0] + 1))


def own_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_namespace_is_entered_from_a_thread_and_the_caller_stays_home() -> None:
    require_root()
    prefix = unique_prefix("smnl")
    ns = f"{prefix}-a"
    home = own_namespace()
    try:
        forks = FORKS[0]
        netlink.create_namespace(ns)
        netlink.create_namespace(ns)  # idempotent
        assert own_namespace() == home
        with Netlink(ns) as nl:
            inside = {link.name: link for link in nl.links()}
        assert FORKS[0] == forks, "entering the namespace forked a process"
        assert set(inside) == {"lo"} and inside["lo"].up
        with Netlink() as host:
            host.add_veth(f"{prefix}h", peer=f"{prefix}p", peer_namespace=ns)
            assert f"{prefix}p" not in {link.name for link in host.links()}
        seen: list[set[str]] = []

        def look() -> None:  # another thread, as the agents' detached starts use it
            with Netlink(ns) as nl:
                seen.append({link.name for link in nl.links()})

        t = threading.Thread(target=look)
        t.start()
        t.join(10)
        assert seen == [{"lo", f"{prefix}p"}]
        assert own_namespace() == home
        before = open_fds()
        for _ in range(20):
            with Netlink(ns) as nl:
                nl.set_up("lo")
        assert open_fds() == before, "opening a namespace leaked descriptors"
    finally:
        with Netlink() as host:
            if f"{prefix}h" in {link.name for link in host.links()}:
                host.delete_link(f"{prefix}h")
        netlink.delete_namespace(ns)
    assert not netlink.namespace_exists(ns)


def test_a_missing_namespace_is_not_found() -> None:
    require_root()
    with pytest.raises(NamespaceNotFound), Netlink(f"{unique_prefix('smnl')}-none") as nl:
        nl.links()
