"""The lab topology on real namespaces.

Aspects: ``up`` builds every namespace, link and route of the plan and is idempotent; a node
reaches a node of the other cluster through the WAN router and the host reaches a node over
its host link; ``status`` reports what the kernel has; ``down`` (the CLI's ``mobility lab down``)
removes exactly the lab's namespaces, host link and processes, also after a crash lost the run
directory, and a second ``down`` is a no-op.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from dataplane import netlink
from dataplane.lab import topology
from dataplane.netlink import Netlink
from tests.conftest import require_root, unique_prefix

UNDERLAY = "198.19.0.0/16"


def ns_run(ns: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=30, check=False)


TCP_REACH = """
import socket
s = socket.socket(); s.settimeout(2)
try:
    s.connect(('{ip}', 9))
except ConnectionRefusedError:
    print('reached')
except OSError as e:
    print('unreachable', e)
"""


def test_lab_up_status_down(tmp_path: object) -> None:
    require_root()
    name = unique_prefix("smt")
    plan = topology.plan(topology.load_config(name=name, underlay=UNDERLAY))
    unrelated = f"{unique_prefix('zzz')}-keep"
    netlink.create_namespace(unrelated)
    try:
        topology.up(plan)
        topology.up(plan)  # idempotent
        spaces = set(netlink.namespaces(f"{name}-"))
        assert spaces == {plan.router_namespace, *(n.namespace for n in plan.nodes)}
        with Netlink() as host:
            assert host.exists(plan.host_ifname)
        core1 = plan.node("core", "n1")
        edge2 = plan.node("edge", "n2")
        # across the WAN router: a RST from the other cluster's node means it was reached
        out = ns_run(core1.namespace, TCP_REACH.format(ip=edge2.underlay_ip)).stdout
        assert out.strip() == "reached", out
        # a node reaches the host end of the host link (how agents reach Redis)
        out = ns_run(edge2.namespace, TCP_REACH.format(ip=plan.host_ip)).stdout
        assert out.strip() == "reached", out
        with Netlink(core1.namespace) as node:
            assert node.link("eth0").mtu == 1500
            assert f"{core1.underlay_ip}/24" in node.addresses("eth0")
        st = topology.status(name)
        assert st["up"] is True
        assert [c["name"] for c in st["clusters"]] == ["core", "edge"]
        assert all(n["up"] for c in st["clusters"] for n in c["nodes"])

        # a process living in a lab namespace is the lab's: down ends it
        sleeper = subprocess.Popen(["ip", "netns", "exec", core1.namespace, "sleep", "300"])
        # a crash lost the run directory: down still finds everything by name
        shutil.rmtree(plan.run_dir)
        env = dict(os.environ, MOBILITY_LAB_NAME=name, MOBILITY_ENV_FILE=os.devnull)
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mobility"), "lab",
                               "down", "--json"], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert sorted(report["namespaces_removed"]) == sorted(spaces)
        assert report["links_removed"] == [plan.host_ifname]
        assert report["namespaces_left"] == []
        assert sleeper.wait(timeout=10) != 0, "the lab's process was ended"
        with Netlink() as host:
            assert not host.exists(plan.host_ifname)
        assert netlink.namespace_exists(unrelated), "down must not touch other namespaces"
        again = topology.down(name)
        assert again.namespaces == [] and again.links == []
    finally:
        topology.down(name)
        netlink.delete_namespace(unrelated)
