"""docker-compose.yml started for real: a site on its own dockerd that moves a service.

Aspects: dockerd runs (its own data root, exec root, socket and pidfile; bridge and pool in
198.19.250.0/23; no iptables) or the test fails; the images build from the local Debian rootfs
(and are not built again while the tree is unchanged); `docker-compose up -d` starts Redis (ACL
users from compose secrets), the API, the orchestrator, beat and the three agents, which enter
their lab nodes' namespaces and drive the lab's containerd; the API answers /healthz and knows
both clusters with their three nodes; an echo service (in core) and a probe client (in edge)
deploy through the API; the service moves from core/n1 to the edge node that does not hold its
client, through the API, succeeds, and the probe loses and duplicates nothing;
`docker-compose down -v`, dockerd stopped by its PID and the lab torn down leave no container,
network, volume, dockerd process, bridge, namespace or mount of the site.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import compose_site
from cli.client import ApiClient
from cli.compose_site import Site
from tests.conftest import SECOND_UNDERLAY, free_port, require_root, unique_prefix

pytestmark = pytest.mark.timeout(1500)  # a first run builds the images (minutes on 2 cores)


@pytest.fixture
def site() -> Iterator[Site]:
    require_root()
    for tool in (compose_site.DOCKERD, compose_site.DOCKER, compose_site.COMPOSE):
        if not Path(tool).exists():
            pytest.fail(f"{tool} is missing: scripts/setup.sh installs docker.io and "
                        "docker-compose")
    s = Site(plan=compose_site.site_plan(unique_prefix("smc"), SECOND_UNDERLAY),
             redis_port=free_port(), api_port=free_port())
    started = time.monotonic()
    try:
        s.up(progress=lambda msg: print(f"[{time.monotonic() - started:6.1f} s] {msg}"))
        print(f"site up in {time.monotonic() - started:.1f} s")
        yield s
    finally:
        try:
            s.down()
        finally:
            left = s.left()
            if not left:
                shutil.rmtree(s.home, ignore_errors=True)
        assert left == {}, f"left behind: {left}"


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_compose_site_moves_a_service_with_nothing_lost(site: Site) -> None:
    # the dockerd is this site's, inside its ranges, with no iptables rules of its own
    info = json.loads(site.dockerd.docker("info", "--format", "{{json .}}"))
    assert info["DockerRootDir"] == str(site.dockerd.data_root)
    bridge = json.loads(site.dockerd.docker("network", "inspect", "bridge"))[0]
    assert bridge["IPAM"]["Config"][0]["Subnet"] == "198.19.250.0/24"
    project_net = json.loads(site.dockerd.docker("network", "inspect", f"{site.name}_default"))
    assert project_net[0]["IPAM"]["Config"][0]["Subnet"].startswith("198.19.251.")
    running = site.compose("ps", "--services", "--filter", "status=running").split()
    assert sorted(running) == sorted(["redis", "api", "orchestrator", "beat",
                                      "dataplane-core-n1", "dataplane-edge-n1",
                                      "dataplane-edge-n2"])

    # deploys and removals answer 202 with an operation: the client follows it to its end
    with ApiClient(site.api_url, token=site.token(), timeout=120) as api:
        assert httpx.get(f"{site.api_url}/healthz").json()["status"] == "ok"
        clusters = {c["name"]: [n["name"] for n in c["nodes"]]
                    for c in api.get("/v1/clusters").json()}
        assert clusters == {"core": ["n1"], "edge": ["n1", "n2"]}

        r = api.post("/v1/services", json={"name": "echo", "workload": "echo",
                                           "cluster": "core"})
        assert r.status_code == 201, r.text
        # the client in edge: the service moves to the edge node that does not hold it
        r = api.post("/v1/services", json={"name": "client", "workload": "probe",
                                           "cluster": "edge", "peers": ["echo"],
                                           "params": {"rate": 1000}})
        assert r.status_code == 201, r.text
        io = site.plan.run_dir / "pods" / r.json()["instance"]["pod"] / "io"

        def received() -> int:
            try:
                return int(json.loads((io / "progress.json").read_text())["received"])
            except (FileNotFoundError, ValueError, KeyError):
                return 0

        wait_for("the probe gets no replies", lambda: received() >= 500, 30)
        source = api.get("/v1/services/echo").json()["instance"]
        assert source["cluster"] == "core"

        r = api.post("/v1/moves", json={"service": "echo", "to_cluster": "edge"})
        assert r.status_code == 202, r.text
        move_id = r.json()["id"]
        move = wait_for("the move did not end", lambda: (
            m if (m := api.get(f"/v1/moves/{move_id}").json())["status"]
            in ("succeeded", "failed", "rolled_back") else None), 120)
        assert move["status"] == "succeeded", move
        now = api.get("/v1/services/echo").json()["instance"]
        client_node = api.get("/v1/services/client").json()["instance"]["node"]
        assert now["cluster"] == "edge" and now["node"] != client_node, (now, client_node)

        after = received()
        wait_for("no replies after the move", lambda: received() >= after + 300, 30)
        assert api.delete("/v1/services/client").status_code == 204
        result = json.loads((io / "probe.json").read_text())
        assert api.delete("/v1/services/echo").status_code == 204
    print(f"probe: {result}; move phases (ms): {move.get('phase_ms')}")
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["sent"] > 1000
