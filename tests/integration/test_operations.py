"""Long operations: no API request waits for a worker, and nothing queued lives for ever.

Aspects: with no worker running, a deploy, a removal and a chain answer 202 at once with a
pending operation (before, the request held an API thread for up to 300 s); the queued task
carries an expiry in its message; an operation no worker started before its expiry reads
``failed`` with the reason; what the API can check itself (an unknown cluster, a name in use)
is answered at once with 404/409, nothing queued; unknown operations are 404.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator

import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from api.app import create_app
from mobility import tokens
from mobility.models import Cluster, Instance, Node, Service
from mobility.settings import Settings
from mobility.store import Registry
from tests.conftest import RedisServer
from workers.routing import ORCHESTRATION


@pytest.fixture
def reg(redis_server: RedisServer) -> Iterator[Registry]:
    url = redis_server.url.rsplit("/", 1)[0] + "/3"
    r = Registry.from_url(url)
    r.r.flushdb()
    r.put_cluster(Cluster(name="core", nodes=(Node(name="n1", cluster="core",
                                                   underlay_ip="198.18.1.10"),)))
    yield r
    r.r.flushdb()
    r.r.close()


@pytest.fixture
def api(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    url = reg.r.connection_pool.connection_kwargs
    redis_url = f"redis://:{url['password']}@{url['host']}:{url['port']}/3"
    monkeypatch.setenv("MOBILITY_REDIS_URL", redis_url)  # the Celery app the API sends with
    monkeypatch.setenv("MOBILITY_ENV_FILE", "/dev/null")
    from mobility.settings import get_settings

    get_settings.cache_clear()
    from workers.app import app as celery_app

    monkeypatch.setattr(celery_app.conf, "broker_url", redis_url)
    monkeypatch.setattr(celery_app.conf, "result_backend", redis_url)
    record, secret = tokens.mint(role=tokens.Role.OPERATOR)
    reg.put_token(record)
    return TestClient(create_app(Settings(redis_url=redis_url)), raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {secret}"})


def queued(reg: Registry) -> list[dict[str, object]]:
    return [json.loads(m) for m in reg.r.lrange(ORCHESTRATION, 0, -1)]


def test_long_operations_answer_at_once_and_expire(api: TestClient, reg: Registry) -> None:
    r = api.post("/v1/services", json={"name": "web", "workload": "echo", "cluster": "core"})
    assert r.status_code == 202, r.text
    op = r.json()["operation"]
    assert op["status"] == "pending" and r.headers["location"] == op["links"]["self"]
    (msg,) = queued(reg)
    headers = msg["headers"]
    assert isinstance(headers, dict)
    assert headers["task"] == "services.deploy" and headers["expires"], headers
    # nobody takes it: once past its expiry the operation reads failed, with the reason
    stored = reg.get_operation(op["id"])
    from dataclasses import replace

    reg.put_operation(replace(stored, expires_at=time.time() - 1))
    r = api.get(op["links"]["self"])
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text
    assert "expired" in r.json()["error"]
    assert api.get("/v1/operations/op-0123456789abcdef").status_code == 404


def test_what_the_api_can_check_is_answered_at_once(api: TestClient, reg: Registry) -> None:
    r = api.post("/v1/services", json={"name": "web", "workload": "echo", "cluster": "mars"})
    assert r.status_code == 404 and "mars" in r.json()["detail"]
    reg.put_service(Service(name="taken", workload="echo",
                            instance=Instance(cluster="core", node="n1", pod="taken-1")))
    r = api.post("/v1/services", json={"name": "taken", "workload": "echo", "cluster": "core"})
    assert r.status_code == 409
    assert queued(reg) == []  # nothing was queued for either
    r = api.delete("/v1/services/taken")
    assert r.status_code == 202 and r.json()["operation"]["kind"] == "services.remove"
    r = api.post("/v1/chains", json={"name": "ch", "elements": [
        {"name": "c", "workload": "probe", "cluster": "core"},
        {"name": "s", "workload": "echo", "cluster": "core"}]})
    assert r.status_code == 202, r.text
    assert sorted(m["headers"]["task"] for m in queued(reg)) == [  # type: ignore[index]
        "chains.deploy", "services.remove"]
