"""Authentication and roles on every route, against a real Redis holding the tokens.

Aspects: every route but ``/healthz`` answers 401 without a token, with a malformed, unknown,
revoked or expired one (read from the app's own OpenAPI, so a new route is covered the
day it is added); each role may do what it should and gets 403 beyond it; a state-changing
request from a browser origin not allowed is 403 even with a good token; tokens are made,
listed (never shown again) and revoked through ``/v1/tokens`` by an admin; signals are rate
limited per token (429); the OpenAPI declares the bearer scheme; CORS is off by default; with a
certificate the API serves HTTPS (and no plain HTTP).
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import needed
from mobility import keys, tokens
from mobility.settings import Settings
from mobility.store import Registry
from mobility.tokens import Role
from tests.conftest import RedisServer, free_port


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/4"
    reg = Registry.from_url(url)
    reg.r.flushdb()
    yield url
    reg.r.flushdb()
    reg.r.close()


@pytest.fixture
def reg(redis_url: str) -> Iterator[Registry]:
    r = Registry.from_url(redis_url)
    yield r
    r.r.close()


def mint(reg: Registry, role: Role, **kw: float) -> str:
    record, secret = tokens.mint(role=role, name=f"test {role}", **kw)  # type: ignore[arg-type]
    reg.put_token(record)
    return secret


_IMAGE_DIRS: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _remove_image_dirs() -> Iterator[None]:
    yield
    while _IMAGE_DIRS:
        shutil.rmtree(_IMAGE_DIRS.pop(), ignore_errors=True)


def app_client(redis_url: str, **settings: object) -> TestClient:
    # an upload (POST /v1/images) lands in a directory of the test's, not the host's (removed
    # when the module is done)
    if "image_dir" not in settings:
        _IMAGE_DIRS.append(tempfile.mkdtemp(prefix="smt-images-"))
        settings["image_dir"] = _IMAGE_DIRS[-1]
    app = create_app(Settings(redis_url=redis_url, **settings))  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


def routes(redis_url: str) -> list[tuple[str, str]]:
    """Every route the app serves, from its own OpenAPI (path parameters filled in)."""
    spec = create_app(Settings(redis_url=redis_url)).openapi()  # type: ignore[arg-type]
    out = []
    for path, ops in spec["paths"].items():
        if path == "/healthz":
            continue
        for method in ops:
            out.append((method.upper(), re.sub(r"\{[^}]+\}", "x1", path)))
    return sorted(out)


def test_every_route_but_healthz_needs_a_token(redis_url: str, reg: Registry) -> None:
    c = app_client(redis_url)
    all_routes = routes(redis_url)
    assert len(all_routes) > 25
    revoked = mint(reg, Role.ADMIN)
    parsed = tokens.parse(revoked)
    assert parsed is not None
    reg.revoke_token(parsed[0])
    expired = mint(reg, Role.ADMIN, ttl_s=60)
    parsed = tokens.parse(expired)
    assert parsed is not None
    reg.r.set(keys.token(parsed[0]), reg.r.get(keys.token(parsed[0])) or b"")  # drop its TTL
    t = reg.get_token(parsed[0])
    assert t is not None
    reg.put_token(tokens.Token(id=t.id, role=t.role, name=t.name, created_at=t.created_at,
                               expires_at=time.time() - 1, digest=t.digest))
    unknown = tokens.mint(role=Role.ADMIN)[1]
    for auth in (None, "Bearer nonsense", f"Basic {revoked}", f"Bearer {revoked}",
                 f"Bearer {expired}", f"Bearer {unknown}"):
        headers = {"Authorization": auth} if auth else {}
        for method, path in all_routes:
            r = c.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (auth, method, path, r.status_code, r.text)
            assert r.headers.get("www-authenticate", "").startswith("Bearer")
    assert c.get("/healthz").status_code in (200, 503)


@pytest.mark.parametrize(("role", "method", "path", "allowed"), [
    (Role.VIEWER, "GET", "/v1/services", True),
    (Role.VIEWER, "POST", "/v1/moves", False),
    (Role.VIEWER, "POST", "/v1/signals", False),
    (Role.OPERATOR, "POST", "/v1/moves", True),
    (Role.OPERATOR, "POST", "/v1/signals", True),
    (Role.OPERATOR, "POST", "/v1/policies/evaluate", True),
    (Role.OPERATOR, "POST", "/v1/policies", False),
    (Role.OPERATOR, "POST", "/v1/clusters", False),
    (Role.OPERATOR, "PUT", "/v1/rebalance/schedule", False),
    (Role.OPERATOR, "PUT", "/v1/rebalance/config", False),
    (Role.OPERATOR, "GET", "/v1/tokens", False),
    (Role.ADMIN, "POST", "/v1/clusters", True),
    (Role.ADMIN, "GET", "/v1/tokens", True),
])
def test_roles(redis_url: str, reg: Registry, role: Role, method: str, path: str,
               allowed: bool) -> None:
    c = app_client(redis_url)
    token = mint(reg, role)
    r = c.request(method, path, headers={"Authorization": f"Bearer {token}"}, json={})
    if allowed:
        assert r.status_code not in (401, 403), (r.status_code, r.text)
    else:
        assert r.status_code == 403, (r.status_code, r.text)
        assert str(needed(method, path)) in r.json()["detail"]


def test_a_foreign_origin_may_not_change_state(redis_url: str, reg: Registry) -> None:
    token = mint(reg, Role.ADMIN)
    headers = {"Authorization": f"Bearer {token}", "Origin": "https://evil.example"}
    c = app_client(redis_url)
    r = c.post("/v1/rebalance/run", headers=headers)
    assert r.status_code == 403 and "origin" in r.json()["detail"]
    assert c.get("/v1/services", headers=headers).status_code == 200  # reads are fine
    allowed = app_client(redis_url, api_origins=("https://ops.example",))
    ok = {"Authorization": f"Bearer {token}", "Origin": "https://ops.example"}
    assert allowed.post("/v1/rebalance/run", headers=ok).status_code not in (401, 403)
    # CORS is off unless origins are named: no Access-Control headers
    assert "access-control-allow-origin" not in c.get("/v1/services", headers=headers).headers


def test_tokens_through_the_api(redis_url: str, reg: Registry) -> None:
    admin = {"Authorization": f"Bearer {mint(reg, Role.ADMIN)}"}
    c = app_client(redis_url)
    r = c.post("/v1/tokens", headers=admin, json={"role": "viewer", "name": "dash",
                                                  "ttl_s": 3600})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["role"] == "viewer" and made["expires_at"] > time.time()
    viewer = {"Authorization": f"Bearer {made['token']}"}
    assert c.get("/v1/services", headers=viewer).status_code == 200
    listed = c.get("/v1/tokens", headers=admin).json()
    assert made["id"] in [t["id"] for t in listed]
    assert all("token" not in t and "digest" not in t for t in listed)
    assert made["token"] not in c.get("/v1/tokens", headers=admin).text
    assert c.post("/v1/tokens", headers=admin, json={"role": "root"}).status_code == 422
    assert c.post("/v1/tokens", headers=admin, json={"role": "viewer", "ttl_s": 1}
                  ).status_code == 422
    assert c.delete(f"/v1/tokens/{made['id']}", headers=admin).status_code == 204
    assert c.get("/v1/services", headers=viewer).status_code == 401
    assert c.delete(f"/v1/tokens/{made['id']}", headers=admin).status_code == 404


def test_signals_are_rate_limited_per_token(redis_url: str, reg: Registry) -> None:
    c = app_client(redis_url, signals_per_minute=3)
    a = {"Authorization": f"Bearer {mint(reg, Role.OPERATOR)}"}
    b = {"Authorization": f"Bearer {mint(reg, Role.OPERATOR)}"}
    body = {"samples": [{"series": "latency_ms", "cluster": "nowhere", "value": 1.0}]}
    codes = [c.post("/v1/signals", headers=a, json=body).status_code for _ in range(4)]
    assert codes[:3] == [404, 404, 404] and codes[3] == 429, codes  # 404: no such cluster
    assert c.post("/v1/signals", headers=b, json=body).status_code == 404  # b has its own


def test_the_openapi_declares_the_bearer_scheme(redis_url: str) -> None:
    spec = app_client(redis_url).get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values()), schemes
    assert spec["paths"]["/v1/moves"]["post"]["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_the_api_serves_tls_when_given_a_certificate(redis_url: str, reg: Registry,
                                                     tmp_path: Path) -> None:
    cert, key = tmp_path / "api.pem", tmp_path / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
    env.update(MOBILITY_REDIS_URL=redis_url, MOBILITY_ENV_FILE=os.devnull)
    with open(tmp_path / "api.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                                 "api.app:create_app", "--host", "127.0.0.1", "--port",
                                 str(port), "--ssl-certfile", str(cert), "--ssl-keyfile",
                                 str(key)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        token = mint(reg, Role.VIEWER)
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/v1/services",
                              verify=ssl.create_default_context(cafile=str(cert)),
                              headers={"Authorization": f"Bearer {token}"}, timeout=2)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
                time.sleep(0.1)
        assert r.status_code == 200, r.text
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        proc.terminate()
        proc.wait(10)
