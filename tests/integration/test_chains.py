"""Service chains and drift repair on the lab.

Aspects: a chain client -> fw -> nat -> server across both clusters carries the probe's
traffic through its middleboxes (their per-flow counters see it); moving each element in turn,
the ends and the middle ones, keeps the chain intact and loses none of 1,000 req/s; a chain is
refused when malformed; node agents repair a deleted VxLAN device, FDB entry and neighbour
entry and report it in the service's health.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.stack import Stack
from dataplane.netlink import Netlink
from tests.integration.test_moves import Pair, wait_terminal

ELEMENTS = [("client", "probe", "core"), ("fw", "middlebox", "core"),
            ("nat", "middlebox", "edge"), ("server", "echo", "edge")]


@pytest.fixture
def api(lab_stack: Stack) -> Iterator[httpx.Client]:
    with lab_stack.api_client(timeout=120) as client:
        yield client


def service(api: httpx.Client, name: str) -> dict[str, Any]:
    r = api.get(f"/v1/services/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def received(pod_dir: Path) -> int:
    try:
        return int(json.loads((pod_dir / "progress.json").read_text())["received"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def wait_received(pod_dir: Path, n: int, timeout: float = 20) -> None:
    start = received(pod_dir)
    deadline = time.monotonic() + timeout
    while received(pod_dir) < start + n:
        assert time.monotonic() < deadline, f"no replies through the chain ({pod_dir})"
        time.sleep(0.05)


def test_moving_every_element_keeps_the_chain_intact(api: httpx.Client,
                                                     lab_stack: Stack) -> None:
    r = api.post("/v1/chains", json={"name": "ch", "rate": 1000, "elements": [
        {"name": n, "workload": w, "cluster": c} for n, w, c in ELEMENTS]})
    assert r.status_code == 201, r.text
    names = r.json()["services"]
    assert names == [f"ch-{n}" for n, _, _ in ELEMENTS]
    pods = lab_stack.run_dir / "pods"
    client_dirs = [pods / service(api, names[0])["instance"]["pod"] / "io"]
    wait_received(client_dirs[-1], 300)

    # the traffic crosses the middleboxes: their flow counters see the client -> server flow
    server_ip = service(api, names[-1])["links"][0]["ip"]
    flows = json.loads((pods / service(api, names[1])["instance"]["pod"] / "io" / "flows.json")
                       .read_text())
    assert any(f"-> {server_ip}:7000" in k and v["packets"] > 100 for k, v in flows.items()), \
        flows

    for element in ("fw", "nat", "server", "client"):
        svc = f"ch-{element}"
        before = service(api, svc)["instance"]
        to = "edge" if before["cluster"] == "core" else "core"
        r = api.post("/v1/moves", json={"service": svc, "to_cluster": to})
        assert r.status_code == 202, r.text
        move = wait_terminal(api, r.json()["id"])
        assert move["status"] == "succeeded", move
        after = service(api, svc)["instance"]
        assert after["cluster"] == to
        if element == "client":
            client_dirs.append(pods / after["pod"] / "io")
        wait_received(client_dirs[-1], 300)

    assert api.delete("/v1/chains/ch").status_code == 204
    results = [json.loads((d / "probe.json").read_text()) for d in client_dirs]
    assert sum(r["lost"] for r in results) == 0, results
    assert sum(r["duplicated"] for r in results) == 0, results
    assert sum(r["sent"] for r in results) > 1000  # the client sent all along
    assert api.get("/v1/chains/ch").status_code == 404
    for name in names:
        assert api.get(f"/v1/services/{name}").status_code == 404


@pytest.mark.parametrize("elements", [
    [("a", "echo", "core"), ("b", "echo", "core")],
    [("a", "probe", "core"), ("b", "middlebox", "core")],
    [("a", "probe", "core"), ("b", "echo", "mars")],
    [("a", "probe", "core")],
])
def test_malformed_chains_are_refused(api: httpx.Client, elements: list[tuple[str, ...]]) -> None:
    r = api.post("/v1/chains", json={"name": "bad", "elements": [
        {"name": n, "workload": w, "cluster": c} for n, w, c in elements]})
    assert r.status_code in (404, 422), r.text
    assert api.get("/v1/chains/bad").status_code == 404
    assert api.get("/v1/services/bad-a").status_code == 404


def wait_health(api: httpx.Client, name: str, pred: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = service(api, name).get("health")
        if health and pred(health):
            return dict(health)
        assert time.monotonic() < deadline, f"health of {name}: {health}"
        time.sleep(0.1)


def test_drift_is_repaired_and_reported(api: httpx.Client, lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "drift")
    echo, client = service(api, pair.echo), service(api, pair.client)
    echo_ns = lab_stack.plan.pod_namespace(echo["instance"]["pod"])
    client_ns = lab_stack.plan.pod_namespace(client["instance"]["pod"])
    wait_health(api, pair.echo, lambda h: h["ok"])
    echo_ip, echo_mac = echo["links"][0]["ip"], echo["links"][0]["mac"]
    ifname = client["links"][0]["ifname"]

    # 1. the service's VxLAN device is deleted
    subprocess.run(["ip", "netns", "exec", echo_ns, "ip", "link", "del", "nsm-1"], check=True)
    wait_health(api, pair.echo, lambda h: any(v.startswith("repaired")
                                             for v in h["links"].values()))
    with Netlink(echo_ns) as nl:
        assert nl.exists("nsm-1")
    # 2. the client's FDB entry and neighbour entry for the service are deleted
    with Netlink(client_ns) as nl:
        (entry,) = [e for e in nl.fdb(ifname) if e.mac == echo_mac]
        nl.delete_fdb(ifname, mac=echo_mac, dst=str(entry.dst))
        nl.delete_neighbour(ifname, ip=echo_ip)
    deadline = time.monotonic() + 10
    while True:
        with Netlink(client_ns) as nl:
            if (any(e.mac == echo_mac for e in nl.fdb(ifname))
                    and nl.has_neighbour(ifname, ip=echo_ip, mac=echo_mac)):
                break
        assert time.monotonic() < deadline, "the client's FDB/neighbour entry was not repaired"
        time.sleep(0.05)
    pair.wait_replies(300)  # traffic flows again
    health = wait_health(api, pair.echo, lambda h: h["ok"] and all(
        v == "ok" for v in h["links"].values()))
    assert health["node"] == f"{echo['instance']['cluster']}.{echo['instance']['node']}"
    pair.finish()
