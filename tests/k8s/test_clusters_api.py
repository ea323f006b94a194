"""Cluster join and unjoin through the HTTP API, with the KubeFed backend, end to end.

Aspects: with a real API process and a real orchestration worker configured for KubeFed
(``MOBILITY_BACKEND=kubefed``, the host kubeconfig), ``POST /v1/clusters`` with a member's
kubeconfig joins it (a KubeFedCluster appears on the host, the cluster in ``GET /v1/clusters``),
joining it again is a 409, a malformed kubeconfig is a 422, and ``DELETE /v1/clusters/{name}``
with the member's admin kubeconfig unjoins it (the KubeFedCluster is gone, the cluster leaves
the registry).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.client import ApiClient
from mobility import tokens
from mobility.backends.kube.membership import KUBEFED_NAMESPACE
from mobility.store import Registry
from mobility.tokens import Role
from tests.conftest import RedisServer, free_port
from tests.k8s.controlplane import ControlPlane

pytestmark = pytest.mark.timeout(300)

KFC = f"/apis/core.kubefed.io/v1beta1/namespaces/{KUBEFED_NAMESPACE}/kubefedclusters"


@pytest.fixture
def kubefed_api(control_plane: ControlPlane, redis_server: RedisServer,
                tmp_path: Path) -> Iterator[ApiClient]:
    """An API and an orchestration worker (real processes) on the KubeFed backend."""
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
    env.update(MOBILITY_REDIS_URL=url, MOBILITY_BACKEND="kubefed",
               MOBILITY_KUBECONFIG=str(control_plane.kubeconfig), MOBILITY_KUBE_CONTEXT="host",
               MOBILITY_ENV_FILE=os.devnull, MOBILITY_RUN_ROOT=str(tmp_path))
    logs = [open(tmp_path / f"{n}.log", "wb") for n in ("worker", "api")]  # noqa: SIM115
    procs = [
        subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q",
                          "orchestration", "-P", "threads", "-c", "2", "-n", "k8s-orch@test",
                          "--without-gossip", "--without-mingle"], env=env, stdout=logs[0],
                         stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                          "--host", "127.0.0.1", "--port", str(port)], env=env,
                         stdout=logs[1], stderr=subprocess.STDOUT),
    ]
    base = f"http://127.0.0.1:{port}"
    reg = Registry.from_url(url)
    record, token = tokens.mint(role=Role.ADMIN, name="test clusters api", ttl_s=3600)
    reg.put_token(record)
    reg.r.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()[-2000:]
            time.sleep(0.2)
        yield ApiClient(base, token=token, timeout=200)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in logs:
            f.close()


def test_join_and_unjoin_through_the_api(kubefed_api: ApiClient,
                                         control_plane: ControlPlane) -> None:
    host = control_plane.servers["host"]
    kubeconfig = Path(control_plane.kubeconfig).read_text()
    with kubefed_api as api:
        r = api.post("/v1/clusters", json={"name": "member-c", "kubeconfig": "[not: a",
                                           "context": "member-c"})
        assert r.status_code == 422, r.text
        r = api.post("/v1/clusters", json={"name": "member-c", "kubeconfig": kubeconfig,
                                           "context": "member-c"})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "member-c"
        assert host.get(f"{KFC}/member-c") is not None
        assert "member-c" in [c["name"] for c in api.get("/v1/clusters").json()]
        r = api.post("/v1/clusters", json={"name": "member-c", "kubeconfig": kubeconfig,
                                           "context": "member-c"})
        assert r.status_code == 409, r.text

        r = api.request("DELETE", "/v1/clusters/member-c",
                        json={"kubeconfig": kubeconfig, "context": "member-c"})
        assert r.status_code == 204, r.text
        assert host.get(f"{KFC}/member-c") is None
        assert "member-c" not in [c["name"] for c in api.get("/v1/clusters").json()]
        assert api.delete("/v1/clusters/member-c").status_code == 404
