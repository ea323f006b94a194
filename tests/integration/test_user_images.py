"""A user's own image on the lab: built without docker, imported, deployed, moved with its state.

Aspects: ``mobility image build`` packs a directory on top of the stack's reference base and
imports it through the API; a stateful service of that image (the example counter app) moves
between clusters while a client talks to it, with no request lost and every counter intact,
inside a real container whose cgroup carries the spec's limits; a ``docker save`` archive
imports too and runs as a stateless service; an image in use cannot be removed; bad requests
are refused naming their field, with nothing created; importing needs the admin role; the
uploaded bytes are checked (not a tar: 422, nothing kept).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.stack import Stack
from dataplane.lab import images as lab_images
from mobility.store import Registry
from mobility.tokens import Role
from tests.integration.test_auth import mint
from tests.integration.test_moves import wait_terminal

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "counter"


def mobility(stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The ``mobility`` command line against the test stack (its env file and token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
    assert stack.env_file is not None
    env["MOBILITY_ENV_FILE"] = stack.env_file
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def counter_image(lab_stack: Stack) -> str:
    """The example app built on the stack's base image and imported, once for the module."""
    r = mobility(lab_stack, "image", "build", str(EXAMPLE / "rootfs"), "--tag", "counter:1",
                 "--from", "mobility/python",
                 "--entrypoint", '["python3", "/app/counter.py"]', "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == ["counter:1"]
    return "counter:1"


def service(api: httpx.Client, name: str) -> dict[str, Any]:
    r = api.get(f"/v1/services/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def cgroup_value(stack: Stack, controller: str, pod: str, item: str) -> str:
    return (Path("/sys/fs/cgroup") / controller / stack.plan.name / pod / item).read_text()


def test_the_example_app_moves_with_its_state(api: httpx.Client, lab_stack: Stack,
                                               counter_image: str) -> None:
    r = mobility(lab_stack, "deploy", str(EXAMPLE / "service.toml"), "--json")
    assert r.returncode == 0, r.stderr
    svc = json.loads(r.stdout)
    assert svc["workload"] == "image" and svc["container"]["image"] == counter_image
    assert svc["container"]["state"] == "sdk"
    pod = svc["instance"]["pod"]
    # the spec's limits are the container's cgroup's
    assert int(cgroup_value(lab_stack, "memory", pod, "memory.limit_in_bytes")) == 96 * 2**20
    quota = int(cgroup_value(lab_stack, "cpu", pod, "cpu.cfs_quota_us"))
    period = int(cgroup_value(lab_stack, "cpu", pod, "cpu.cfs_period_us"))
    assert quota / period == pytest.approx(0.5)
    # the app runs as a container: its process sits in the lab's containerd namespace
    meta = json.loads((lab_stack.run_dir / "pods" / pod / "meta.json").read_text())
    assert f"/{lab_stack.plan.name}/{pod}" in Path(f"/proc/{meta['pid']}/cgroup").read_text()
    # nothing of the control plane in the container's environment
    environ = Path(f"/proc/{meta['pid']}/environ").read_bytes().split(b"\0")
    assert b"MOBILITY_STATE_SOCKET=/run/mobility/state.sock" in environ
    assert not [e for e in environ if b"REDIS" in e or b"redis://" in e or b"KEY" in e]

    r = mobility(lab_stack, "deploy", str(EXAMPLE / "client.toml"), "--json")
    assert r.returncode == 0, r.stderr
    client_io = lab_stack.run_dir / "pods" / json.loads(r.stdout)["instance"]["pod"] / "io"
    wait_progress(client_io, 300)

    r = api.post("/v1/moves", json={"service": "counter", "to_cluster": "edge"})
    assert r.status_code == 202, r.text
    move = wait_terminal(api, r.json()["id"], timeout=90)
    assert move["status"] == "succeeded", move
    assert move["stateful"] is True and move["state_bytes"] > 0
    assert service(api, "counter")["instance"]["cluster"] == "edge"
    wait_progress(client_io, 300)  # the client goes on against the moved counter

    assert api.delete("/v1/services/counter-client").status_code == 204
    result = json.loads((client_io / "probe.json").read_text())
    assert result["lost"] == 0, result
    assert result["counters_ok"] is True, result
    assert api.delete("/v1/services/counter").status_code == 204


def wait_progress(io_dir: Path, n: int, timeout: float = 30) -> None:
    def answered() -> int:
        try:
            return int(json.loads((io_dir / "progress.json").read_text()).get("answered", 0))
        except (FileNotFoundError, ValueError):
            return 0

    start, deadline = answered(), time.monotonic() + timeout
    while answered() < start + n:
        assert time.monotonic() < deadline, f"no answers ({io_dir})"
        time.sleep(0.05)


def docker_save_archive(oci: Path, name: str) -> bytes:
    """A ``docker save`` archive of the image in an OCI archive (its config and layers)."""
    with tarfile.open(oci) as src:
        index = json.load(src.extractfile("index.json"))  # type: ignore[arg-type]
        mdesc = index["manifests"][0]
        manifest = json.load(src.extractfile(  # type: ignore[arg-type]
            f"blobs/sha256/{mdesc['digest'].split(':')[1]}"))
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as dst:
            def copy(digest: str, as_name: str) -> None:
                member = src.getmember(f"blobs/sha256/{digest.split(':')[1]}")
                info = tarfile.TarInfo(as_name)
                info.size = member.size
                dst.addfile(info, src.extractfile(member))

            config = manifest["config"]["digest"].split(":")[1] + ".json"
            copy(manifest["config"]["digest"], config)
            layers = []
            for i, layer in enumerate(manifest["layers"]):
                copy(layer["digest"], f"l{i}/layer.tar")
                layers.append(f"l{i}/layer.tar")
            doc = json.dumps([{"Config": config, "RepoTags": [name],
                               "Layers": layers}]).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(doc)
            dst.addfile(info, io.BytesIO(doc))
    return out.getvalue()


def test_a_docker_save_archive_runs_as_a_stateless_service(
        api: httpx.Client, lab_stack: Stack, tmp_path: Path) -> None:
    archive = tmp_path / "echo-docker.tar"
    echo = lab_images.build_reference()[lab_images.reference_image("echo")]
    archive.write_bytes(docker_save_archive(echo, "team/echo:2"))
    r = mobility(lab_stack, "image", "import", str(archive), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == ["team/echo:2"]
    listed = {i["name"]: i for i in api.get("/v1/images").json()}
    assert listed["team/echo:2"]["entrypoint"] == ["python3", "-m",
                                                   "dataplane.lab.workloads.echo"]

    # args only: the image's entrypoint with these args (as Kubernetes does)
    r = api.post("/v1/services", json={
        "name": "uecho", "image": "team/echo:2", "cluster": "core",
        "args": ["--port", "7300"], "ports": [7300]})
    assert r.status_code == 201, r.text
    r = api.post("/v1/services", json={"name": "uprobe", "workload": "probe",
                                       "cluster": "core", "peers": ["uecho"]})
    assert r.status_code == 201, r.text
    assert r.json()["params"]["target"].endswith(":7300")
    probe_io = lab_stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io"
    deadline = time.monotonic() + 20
    while not (probe_io / "progress.json").exists() or json.loads(
            (probe_io / "progress.json").read_text()).get("received", 0) < 200:
        assert time.monotonic() < deadline, "the user's echo does not answer"
        time.sleep(0.05)
    r = api.post("/v1/moves", json={"service": "uecho", "to_cluster": "edge"})
    assert r.status_code == 202, r.text
    assert wait_terminal(api, r.json()["id"])["status"] == "succeeded"

    # in use: not removable
    r = api.delete("/v1/images/team/echo:2")
    assert r.status_code == 409, r.text
    assert api.delete("/v1/services/uprobe").status_code == 204
    result = json.loads((probe_io / "probe.json").read_text())
    assert result["lost"] == 0, result
    assert api.delete("/v1/services/uecho").status_code == 204
    r = mobility(lab_stack, "image", "rm", "team/echo:2")
    assert r.returncode == 0, r.stderr
    assert "team/echo:2" not in {i["name"] for i in api.get("/v1/images").json()}


@pytest.mark.parametrize(("body", "field"), [
    ({"image": "nosuch:1", "ports": [7000]}, "image"),
    ({"image": "team/echo:2", "ports": [70000]}, "ports"),
    ({"image": "team/echo:2", "resources": {"memory": "lots"}}, "resources"),
    ({"image": "team/echo:2", "resources": {"cpu": "0m"}}, "resources.cpu"),
    ({"image": "team/echo:2", "state": "redis"}, "state"),
    ({"workload": "echo", "command": ["sh"]}, "command"),
    ({"image": "team/echo:2", "env": {"MOBILITY_X": "1"}}, "env.MOBILITY_X"),
])
def test_a_bad_request_is_refused_naming_its_field(api: httpx.Client, registry: Registry,
                                                    body: dict[str, Any], field: str) -> None:
    r = api.post("/v1/services", json={"name": "badreq", "cluster": "core", **body})
    assert r.status_code == 422, r.text
    assert field in json.dumps(r.json()["detail"]), r.text
    assert api.get("/v1/services/badreq").status_code == 404
    assert registry.get_service("badreq") is None


def test_import_needs_an_admin_and_an_image_archive(lab_stack: Stack, registry: Registry) -> None:
    operator = mint(registry, Role.OPERATOR)
    with httpx.Client(base_url=lab_stack.api_url, timeout=30,
                      headers={"Authorization": f"Bearer {operator}"}) as api:
        r = api.post("/v1/images", content=b"x" * 1024,
                     headers={"Content-Type": "application/x-tar"})
        assert r.status_code == 403, r.text
        assert api.get("/v1/images").status_code == 200  # reading is for every role
    incoming = Path(lab_stack.image_dir) / "incoming"
    before = set(incoming.glob("*")) if incoming.exists() else set()
    with lab_stack.api_client(timeout=60) as admin:
        r = admin.post("/v1/images", content=b"this is not a tar archive" * 100,
                       headers={"Content-Type": "application/x-tar"})
        assert r.status_code == 422, r.text
        assert "archive" in r.json()["detail"]
    assert set(incoming.glob("*")) == before  # the upload is not kept, nor filed
    assert not [p for p in Path(lab_stack.image_dir).glob("*.tar") if p.stat().st_size < 10_000]
