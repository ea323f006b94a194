"""Cluster join and unjoin through the HTTP API, with the KubeFed backend, end to end.

Aspects: with a real API process and a real orchestration worker configured for KubeFed
(``MOBILITY_BACKEND=kubefed``, the host kubeconfig), ``POST /v1/clusters`` with a member's
kubeconfig joins it (a KubeFedCluster appears on the host, the cluster in ``GET /v1/clusters``),
joining it again is a 409, a malformed kubeconfig is a 422, and ``DELETE /v1/clusters/{name}``
with the member's admin kubeconfig unjoins it (the KubeFedCluster is gone, the cluster leaves
the registry).

A caller's kubeconfig is checked by the API before anything is queued: ``exec``,
``auth-provider``, ``tokenFile``, file-path fields, an http server, a server with a path or
user info, and garbage YAML are each a 422 naming the field, for a join and for an unjoin,
with nothing queued or stored. An ``exec`` command never runs and a ``tokenFile`` is never
read, not even when a task carrying such a kubeconfig reaches the worker directly (the worker
takes stored credentials only). While the worker is stopped, the queued join and everything
in Redis are read raw: no token is in the task's arguments (body or ``argsrepr``) nor anywhere
else in Redis, only a credentials id whose record is sealed and expires; once the worker runs
the join, the record is gone, and no token is in the API's or the worker's log. A member whose
server answers errors with a body (a Status message, an error page, a reason phrase) gives an
answer that says the status and never that body.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import yaml

from cli.client import ApiClient
from mobility import keys, tokens
from mobility.backends.kube.karmada import KarmadaFederation
from mobility.backends.kube.kubefed import KubeFedFederation
from mobility.backends.kube.membership import KUBEFED_NAMESPACE
from mobility.models import Cluster
from mobility.operations import Operation, OpStatus
from mobility.store import Registry
from mobility.tokens import Role
from tests.conftest import RedisServer, free_port
from tests.k8s.conftest import client
from tests.k8s.controlplane import ControlPlane
from tests.k8s.karmada_plane import KarmadaPlane
from workers.canvas import JOIN_CLUSTER
from workers.routing import ORCHESTRATION

pytestmark = pytest.mark.timeout(300)

KFC = f"/apis/core.kubefed.io/v1beta1/namespaces/{KUBEFED_NAMESPACE}/kubefedclusters"
MARKER = "remote-body-marker-5e1d"
FILE_SECRET = "file-secret-token-9c2b"


class Stack:
    """The API and an orchestration worker (real processes) on the KubeFed backend."""

    def __init__(self, cp: ControlPlane, redis_server: RedisServer, tmp_path: Path, *,
                 backend: str = "kubefed", kubeconfig: Path | None = None,
                 context: str = "host") -> None:
        self.url = redis_server.url.rsplit("/", 1)[0] + "/9"
        self.tmp = tmp_path
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
        self.env.update(MOBILITY_REDIS_URL=self.url, MOBILITY_BACKEND=backend,
                        MOBILITY_KUBECONFIG=str(kubeconfig or cp.kubeconfig),
                        MOBILITY_KUBE_CONTEXT=context,
                        MOBILITY_ENV_FILE=os.devnull, MOBILITY_RUN_ROOT=str(tmp_path))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []
        self.worker: subprocess.Popen[bytes] | None = None
        self.registry = Registry.from_url(self.url)
        self.registry.r.flushdb()
        record, self.token = tokens.mint(role=Role.ADMIN, name="test clusters api", ttl_s=3600)
        self.registry.put_token(record)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        self.logs.append(log)
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_api(self) -> None:
        self._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                            "--host", "127.0.0.1", "--port", str(self.port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log("api")[-2000:]
            time.sleep(0.2)

    def start_worker(self) -> None:
        self.worker = self._spawn("worker", [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", ORCHESTRATION,
            "-P", "threads", "-c", "2", "-n", "k8s-orch@test", "--without-gossip",
            "--without-mingle"])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, *, follow: bool = True) -> ApiClient:
        return ApiClient(self.base, token=self.token, timeout=200, follow=follow)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self.logs:
            f.close()
        self.registry.r.flushdb()
        self.registry.r.close()


@pytest.fixture
def stack(control_plane: ControlPlane, redis_server: RedisServer,
          tmp_path: Path) -> Iterator[Stack]:
    """The API alone; a test starts the worker when it wants one."""
    s = Stack(control_plane, redis_server, tmp_path)
    try:
        s.start_api()
        yield s
    finally:
        s.stop()
        _unjoin_leftover(control_plane, "member-c")


@pytest.fixture
def kubefed_api(stack: Stack) -> Iterator[ApiClient]:
    """An API and an orchestration worker (real processes) on the KubeFed backend."""
    stack.start_worker()
    yield stack.api()


def _unjoin_leftover(cp: ControlPlane, name: str) -> None:
    """What a failed test left joined goes, so the next tests find the spare cluster clean."""
    if cp.servers["host"].get(f"{KFC}/{name}") is None:
        return
    fed = KubeFedFederation(host=client(cp, "host"), namespace="mobility",
                            removal_timeout_s=30)
    fed.unjoin(name=name, member=client(cp, name))


def member_kubeconfig(cp: ControlPlane, name: str = "member-c") -> dict[str, Any]:
    """The one-context kubeconfig of a cluster (inline token and CA), as a dict."""
    doc = yaml.safe_load((cp.workdir / f"kubeconfig-{name}").read_text())
    assert isinstance(doc, dict)
    return doc


def with_user(doc: dict[str, Any], **user: Any) -> str:
    doc = json.loads(json.dumps(doc))
    doc["users"][0]["user"] = user
    return yaml.safe_dump(doc)


def with_cluster(doc: dict[str, Any], **cluster: Any) -> str:
    doc = json.loads(json.dumps(doc))
    doc["clusters"][0]["cluster"].update(cluster)
    return yaml.safe_dump(doc)


def secrets_of(cp: ControlPlane) -> list[bytes]:
    """Every admin token of the control plane, as it could appear: plain or base64."""
    out = []
    for s in cp.servers.values():
        out += [s.token.encode(), base64.b64encode(s.token.encode())]
    return out


def redis_blobs(conn: Any) -> dict[str, list[bytes]]:
    """Every value in the database, read raw (what ``redis-cli`` would show), by key; kombu's
    messages also with their base64 body decoded."""
    out: dict[str, list[bytes]] = {}
    for raw_key in conn.scan_iter(count=1000):
        key = raw_key.decode(errors="replace")
        kind = conn.type(raw_key).decode()
        if kind == "string":
            vals = [conn.get(raw_key) or b""]
        elif kind == "list":
            vals = list(conn.lrange(raw_key, 0, -1))
        elif kind == "hash":
            vals = [b for kv in conn.hgetall(raw_key).items() for b in kv]
        elif kind == "set":
            vals = list(conn.smembers(raw_key))
        elif kind == "zset":
            vals = list(conn.zrange(raw_key, 0, -1))
        elif kind == "stream":
            vals = [b for _, fields in conn.xrange(raw_key) for kv in fields.items() for b in kv]
        else:
            vals = []
        decoded = []
        for v in vals:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                body = json.loads(v).get("body")
                if isinstance(body, str):
                    decoded.append(base64.b64decode(body))
        out[key] = [raw_key, *vals, *decoded]
    return out


def queued(conn: Any) -> list[dict[str, Any]]:
    """The messages waiting in the orchestration queue, with their decoded arguments."""
    out = []
    for raw in conn.lrange(ORCHESTRATION, 0, -1):
        msg = json.loads(raw)
        args, _kwargs, _embed = msgpack.unpackb(base64.b64decode(msg["body"]), raw=False)
        out.append({"task": msg["headers"]["task"], "args": args,
                    "argsrepr": msg["headers"].get("argsrepr", "")})
    return out


@dataclass
class FakeMember:
    """An https server posing as a member's API server: records every request and answers
    each with one status, body and reason phrase."""

    cp: ControlPlane
    status: int = 500
    body: bytes = b""
    reason: str = ""
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                fake.seen.append((self.command, self.path,
                                  self.headers.get("Authorization") or ""))
                self.send_response(fake.status, fake.reason or None)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(fake.body)))
                self.end_headers()
                self.wfile.write(fake.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

            def log_message(self, *args: Any) -> None:
                pass

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cp.workdir / "serving.crt", self.cp.workdir / "serving.key")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, **user: Any) -> dict[str, Any]:
        ca = (self.cp.workdir / "ca.crt").read_bytes()
        return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {
                    "server": self.endpoint,
                    "certificate-authority-data": base64.b64encode(ca).decode()}}],
                "users": [{"name": "fake", "user": user or {"token": "fake-member-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_member(control_plane: ControlPlane) -> Iterator[FakeMember]:
    fake = FakeMember(control_plane)
    try:
        yield fake
    finally:
        fake.close()


def wait_operation(reg: Registry, op_id: str, timeout: float = 60) -> Operation:
    deadline = time.monotonic() + timeout
    while True:
        op = reg.get_operation(op_id)
        if op.status.terminal:
            return op
        assert time.monotonic() < deadline, f"operation {op_id} still {op.status}"
        time.sleep(0.1)


# --- join and unjoin, end to end ---


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


def test_join_and_unjoin_through_the_api_on_karmada(
        control_plane: ControlPlane, karmada_plane: KarmadaPlane, redis_server: RedisServer,
        tmp_path: Path) -> None:
    """The same API on the Karmada backend: the worker joins the member in push mode (a
    Cluster and its secret in Karmada's API server), the cluster's record lists its nodes as
    Karmada's credentials reach them, and the unjoin removes both."""
    clusters = "/apis/cluster.karmada.io/v1alpha1/clusters"
    s = Stack(control_plane, redis_server, tmp_path, backend="karmada",
              kubeconfig=karmada_plane.kubeconfig, context="karmada")
    kubeconfig = Path(control_plane.kubeconfig).read_text()
    try:
        s.start_api()
        s.start_worker()
        with s.api() as api:
            r = api.post("/v1/clusters", json={"name": "member-c", "kubeconfig": kubeconfig,
                                               "context": "member-c"})
            assert r.status_code == 201, (r.text, s.log("worker")[-3000:])
            cluster = karmada_plane.server.get(f"{clusters}/member-c")
            assert cluster is not None and cluster["spec"]["syncMode"] == "Push"
            assert "member-c" in [c["name"] for c in api.get("/v1/clusters").json()]
            r = api.request("DELETE", "/v1/clusters/member-c",
                            json={"kubeconfig": kubeconfig, "context": "member-c"})
            assert r.status_code == 204, r.text
            assert karmada_plane.server.get(f"{clusters}/member-c") is None
            assert "member-c" not in [c["name"] for c in api.get("/v1/clusters").json()]
    finally:
        s.stop()
        if karmada_plane.server.get(f"{clusters}/member-c") is not None:
            KarmadaFederation(karmada=karmada_plane.client()).unjoin(
                name="member-c", member=client(control_plane, "member-c"))


# --- a caller's kubeconfig is checked before anything is queued ---

REFUSALS: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
    ("exec", lambda d: with_user(d, exec={"apiVersion": "client.authentication.k8s.io/v1",
                                          "command": "/bin/true"}), "users[0].user.exec"),
    ("auth-provider", lambda d: with_user(d, **{"auth-provider": {"name": "oidc"}}),
     "users[0].user.auth-provider"),
    ("tokenFile", lambda d: with_user(d, tokenFile="/etc/hostname"), "users[0].user.tokenFile"),
    ("client-key path", lambda d: with_user(d, token="t", **{
        "client-key": "/etc/ssl/private/k.pem"}), "users[0].user.client-key"),
    ("certificate-authority path", lambda d: with_cluster(
        d, **{"certificate-authority": "/etc/ssl/certs/ca-certificates.crt"}),
     "clusters[0].cluster.certificate-authority"),
    ("http server", lambda d: with_cluster(d, server="http://127.0.0.1:8470"),
     "clusters[0].cluster.server"),
    ("server path", lambda d: with_cluster(d, server="https://127.0.0.1:6443/api/v1/secrets"),
     "clusters[0].cluster.server"),
    ("server user info", lambda d: with_cluster(d, server="https://a:b@127.0.0.1:6443"),
     "clusters[0].cluster.server"),
    ("garbage YAML", lambda d: "clusters: [{name: x, cluster: {server: ]]", "kubeconfig"),
]


def test_every_refusal_is_a_422_naming_the_field(stack: Stack,
                                                 control_plane: ControlPlane) -> None:
    doc = member_kubeconfig(control_plane)
    token = control_plane.servers["member-c"].token
    stack.registry.put_cluster(Cluster(name="member-z", nodes=()))  # something to unjoin
    with stack.api() as api:
        for what, make, field_name in REFUSALS:
            text = make(doc)
            for method, path in (("POST", "/v1/clusters"), ("DELETE", "/v1/clusters/member-z")):
                body: dict[str, Any] = {"kubeconfig": text}
                if method == "POST":
                    body["name"] = "member-c"
                r = api.request(method, path, json=body)
                assert r.status_code == 422, (what, method, r.text)
                detail = r.json()["detail"]
                assert isinstance(detail, str) and detail.startswith(f"{field_name}: "), (
                    what, method, detail)
                assert token not in r.text, (what, method)
    # nothing was queued or stored, and the cluster is still there
    assert stack.registry.r.llen(ORCHESTRATION) == 0
    assert list(stack.registry.r.scan_iter(keys.operation("*"))) == []
    assert list(stack.registry.r.scan_iter(keys.credentials("*"))) == []
    assert stack.registry.get_cluster("member-z") is not None


def test_an_exec_entry_never_runs_and_a_token_file_is_never_read(
        stack: Stack, control_plane: ControlPlane, fake_member: FakeMember,
        tmp_path: Path) -> None:
    marker = tmp_path / "exec-ran"
    token_file = tmp_path / "token"
    token_file.write_text(FILE_SECRET)
    # the exec plugin would print a credential after leaving a marker
    script = (f"touch {marker}; printf '%s' '{{\"apiVersion\": "
              "\"client.authentication.k8s.io/v1beta1\", \"kind\": \"ExecCredential\", "
              f"\"status\": {{\"token\": \"{FILE_SECRET}\"}}}}'")
    execs = fake_member.kubeconfig(exec={
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "/bin/sh",
        "args": ["-c", script]})
    reads = fake_member.kubeconfig(tokenFile=str(token_file))
    stack.start_worker()
    with stack.api() as api:
        for doc, field_name in ((execs, "users[0].user.exec"), (reads, "users[0].user.tokenFile")):
            r = api.post("/v1/clusters", json={"name": "member-c",
                                               "kubeconfig": yaml.safe_dump(doc)})
            assert r.status_code == 422 and r.json()["detail"].startswith(field_name), r.text
        # the same kubeconfigs, in a task sent to the worker directly (not through the API):
        # refused there too, never loaded
        from workers.app import client as celery_client

        celery = celery_client(stack.url)
        ended = []
        try:
            for doc in (execs, reads):
                op = Operation.new(kind=JOIN_CLUSTER, target="member-c", expires_s=60)
                stack.registry.put_operation(op)
                celery.send_task(JOIN_CLUSTER, queue=ORCHESTRATION, expires=60, args=[
                    op.id, {"name": "member-c", "kubeconfig": yaml.safe_dump(doc),
                            "context": "fake"}])
                ended.append(wait_operation(stack.registry, op.id))
        finally:
            celery.close()
    time.sleep(1)  # an exec plugin, had it been started, has had time to leave its mark
    assert not marker.exists(), "the kubeconfig's exec command ran"
    assert not any(FILE_SECRET in auth for _, _, auth in fake_member.seen), fake_member.seen
    assert fake_member.seen == []  # nothing was even sent to the caller's server
    for done in ended:
        assert done.status == OpStatus.FAILED and done.error_kind == "invalid", done
        assert "never a kubeconfig" in (done.error or "")


def test_a_queued_join_holds_no_secret(stack: Stack, control_plane: ControlPlane) -> None:
    conn = stack.registry.r
    kubeconfig = Path(control_plane.kubeconfig).read_text()  # every cluster's admin token
    with stack.api(follow=False) as api:
        r = api.post("/v1/clusters", json={"name": "member-c", "kubeconfig": kubeconfig,
                                           "context": "member-c"})
        assert r.status_code == 202, r.text
        op_id = r.json()["operation"]["id"]
        # the worker is not running: the task waits in the broker, read raw
        [message] = queued(conn)
        assert message["task"] == JOIN_CLUSTER
        assert message["args"][0] == op_id
        spec = message["args"][1]
        assert set(spec) == {"name", "credentials"} and spec["name"] == "member-c"
        assert spec["credentials"].startswith("cred-")
        assert "kubeconfig" not in message["argsrepr"]
        for key, blobs in redis_blobs(conn).items():
            for blob in blobs:
                for secret in secrets_of(control_plane):
                    assert secret not in blob, f"a token in Redis, under {key}"
                assert b"BEGIN CERTIFICATE" not in blob, key
        sealed = keys.credentials(spec["credentials"])
        assert conn.exists(sealed)
        assert 0 < conn.ttl(sealed) <= 2 * 180 + 60  # expires if no task ever uses it
        assert stack.registry.get_operation(op_id).status == OpStatus.PENDING

        stack.start_worker()
        op = wait_operation(stack.registry, op_id, timeout=120)
        assert op.status == OpStatus.SUCCEEDED, (op, stack.log("worker")[-3000:])
        assert not conn.exists(sealed), "the credentials outlived their join"

    with stack.api() as api:  # and unjoin, end to end, leaving nothing behind either
        r = api.request("DELETE", "/v1/clusters/member-c",
                        json={"kubeconfig": kubeconfig, "context": "member-c"})
        assert r.status_code == 204, r.text
    assert control_plane.servers["host"].get(f"{KFC}/member-c") is None
    assert list(conn.scan_iter(keys.credentials("*"))) == []
    for name in ("api", "worker"):
        text = stack.log(name)
        for secret in secrets_of(control_plane):
            assert secret.decode() not in text, f"a token in the {name}'s log"


@pytest.mark.parametrize(("status", "body", "reason"), [
    (500, f"<html><body>internal {MARKER}</body></html>".encode(), f"Broken {MARKER}"),
    (403, json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "reason": "Forbidden", "code": 403,
                      "message": f"secrets are forbidden: {MARKER}"}).encode(), ""),
])
def test_a_remote_error_body_never_comes_back(stack: Stack, fake_member: FakeMember,
                                              status: int, body: bytes, reason: str) -> None:
    fake_member.status, fake_member.body, fake_member.reason = status, body, reason
    stack.start_worker()
    with stack.api() as api:
        r = api.post("/v1/clusters", json={"name": "member-c", "kubeconfig": yaml.safe_dump(
            fake_member.kubeconfig())})
        assert r.status_code in (502, 503), r.text
        assert MARKER not in r.text
        detail = r.json()["detail"]
        assert f": {status} " in detail, detail  # the status is said
        op = api.get(r.json()["operation"]["links"]["self"]).json()
        assert MARKER not in json.dumps(op)
    assert fake_member.seen, "the join never reached the fake member"
    assert fake_member.seen[0][2] == "Bearer fake-member-token"
    assert MARKER not in stack.log("worker") and MARKER not in stack.log("api")
    assert list(stack.registry.r.scan_iter(keys.credentials("*"))) == []
