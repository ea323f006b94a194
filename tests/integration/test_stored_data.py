"""What is stored never makes a reader fail, and one owner's signal series are bounded.

On a real Redis (a database of this module's own, emptied for each test), through the API and
through what beat's policy tick runs (:func:`mobility.automation.evaluate`).

Aspects: a series key with a ``|`` too many (what a region with a ``|`` once made: every plan,
evaluation and rebalance run was a 500 for the window's lifetime, and beat's tick failed every
2 s), one of another type, and a sample that does not decode are skipped, the plan,
evaluation and run answer 200 and the tick's evaluation runs; a stored policy, configuration,
last run or last-move time that no longer reads is skipped (or defaulted), never raised; an
empty registry, a cluster without nodes, a service in a cluster that is gone and a negative
``load`` still give a plan (dividing by no capacity was a 500). A service (or a cluster's own
series) holds at most ``max_series_per_owner`` distinct series: a batch that would pass the
bound is a 409 and stores nothing at all; series it already has are still taken; one that
expired frees its place; owners are counted apart (free text once made 50,000 keys from 50
requests).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)  # see test_api_validation.py
    from fastapi.testclient import TestClient

from api.app import create_app
from mobility import automation, keys, tokens
from mobility.models import Cluster, Instance, Node, Service
from mobility.policies import Condition, Policy, Target
from mobility.settings import Settings
from mobility.store import Registry
from mobility.store.base import pack
from tests.conftest import RedisServer

DB = 11  # no other test uses it


@pytest.fixture
def reg(redis_server: RedisServer) -> Iterator[Registry]:
    r = Registry.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{DB}")
    r.r.flushdb()
    yield r
    r.r.flushdb()
    r.r.close()


def api_of(reg: Registry, **settings: Any) -> TestClient:
    url = reg.r.connection_pool.connection_kwargs
    redis_url = f"redis://:{url['password']}@{url['host']}:{url['port']}/{DB}"
    record, secret = tokens.mint(role=tokens.Role.ADMIN, name="stored data tests")
    reg.put_token(record)
    app = create_app(Settings(redis_url=redis_url, **settings))  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {secret}"})


def seed(reg: Registry) -> None:
    for name in ("core", "edge"):
        reg.put_cluster(Cluster(name=name, labels=(("tier", name),), nodes=(
            Node(name="n0", cluster=name, underlay_ip="198.51.100.1"),)))
    for name, cluster in (("web", "core"), ("db", "core"), ("api", "edge")):
        reg.put_service(Service(name=name, workload="echo",
                                instance=Instance(cluster=cluster, node="n0", pod=f"p-{name}")))
    reg.put_policy(Policy(id="offload", name="offload", services=("web",),
                          condition=Condition(series="latency_ms", aggregate="p95",
                                              comparator=">", threshold=20, duration_s=1,
                                              region="eu"),
                          target=Target(labels={"tier": "edge"})))


def readers_answer(api: TestClient) -> None:
    for method, path in (("GET", "/v1/rebalance/plan"), ("POST", "/v1/rebalance/run"),
                         ("POST", "/v1/policies/evaluate?dry_run=true"),
                         ("POST", "/v1/policies/evaluate?dry_run=false"),
                         ("GET", "/v1/policies"), ("GET", "/v1/rebalance/config")):
        r = api.request(method, path)
        assert r.status_code == 200, (method, path, r.status_code, r.text)


def poison(reg: Registry, key: str | bytes, *, kind: str = "zset") -> None:
    if kind == "zset":
        reg.r.zadd(key, {pack([time.time(), 45.0]): time.time()})
    else:
        reg.r.set(key, "not a series")
    reg.r.sadd(keys.SIGNALS, key)


@pytest.mark.parametrize(("key", "kind"), [
    # what POST /v1/signals stored for region "eu|x" before regions were held to an alphabet
    (keys.signal("latency_ms", "core", "web", "eu|x"), "zset"),
    (keys.signal("latency_ms", "core", "web", None) + "|more", "zset"),
    (f"{keys.SIGNAL_PREFIX}latency_ms", "zset"),
    (keys.signal("latency_ms", "core", "web", "EU"), "zset"),
    (keys.signal("latency_ms", "core", "web", "eu"), "string"),  # another type under the key
    ("mob:not-a-signal", "zset"),
    (b"mob:signal:latency_ms|core|web|\xff", "zset"),  # not even UTF-8
])
def test_a_series_key_that_does_not_parse_is_skipped(reg: Registry, key: str | bytes,
                                                     kind: str) -> None:
    seed(reg)
    good = keys.signal("latency_ms", "core", "web", "eu")
    if key != good:
        poison(reg, good)
    poison(reg, key, kind=kind)
    api = api_of(reg)
    readers_answer(api)
    automation.evaluate(reg)  # beat's policy tick: it raised on every tick
    automation.plan(reg)
    series = reg.samples()
    assert all(keys.safe_component(k.region) for k in series if k.region)
    if kind == "zset" and key != good:
        assert len(series) == 1 and next(iter(series)).region == "eu", series
        assert reg.r.sismember(keys.SIGNALS, good)
        assert not reg.r.sismember(keys.SIGNALS, key)  # forgotten, not read every time


def test_a_sample_that_does_not_decode_is_skipped(reg: Registry) -> None:
    seed(reg)
    key = keys.signal("latency_ms", "core", "web", "eu")
    now = time.time()
    reg.r.zadd(key, {b"\xc1": now, pack(["x", 1]): now, pack([now, float("nan")]): now,
                     pack([now, 45.0]): now + 0.001})
    reg.r.sadd(keys.SIGNALS, key)
    readers_answer(api_of(reg))
    ((_, samples),) = reg.samples().items()
    assert samples == [(now, 45.0)]


def test_stored_records_that_do_not_read_are_skipped(reg: Registry) -> None:
    seed(reg)
    reg.r.set(keys.policy("broken"), b"\xc1")
    reg.r.sadd(keys.POLICIES, "broken")
    reg.r.set(keys.policy("old"), pack({"id": "old", "services": ["web"]}))  # no condition
    reg.r.sadd(keys.POLICIES, "old", "a:b")
    reg.r.set(keys.REBALANCE_CONFIG, pack({"windows": [{"cluster": "core", "start": 5,
                                                        "end": 1}]}))
    reg.r.set(keys.REBALANCE_LAST, pack({"at": "yesterday"}))
    reg.r.set(keys.last_move("web"), "not a time")
    api = api_of(reg)
    readers_answer(api)
    assert [p["id"] for p in api.get("/v1/policies").json()] == ["offload"]
    assert api.get("/v1/policies/broken").status_code == 404
    assert api.get("/v1/rebalance/last").status_code == 404
    assert api.get("/v1/rebalance/config").json()["windows"] == []
    automation.evaluate(reg)
    # a policy that does not read is replaced by creating it again
    body = Policy.to_dict(reg.get_policy("offload"))  # type: ignore[arg-type]
    assert api.post("/v1/policies", json={**body, "id": "broken"}).status_code == 201


def test_a_plan_without_capacity_is_a_plan(reg: Registry) -> None:
    api = api_of(reg)
    r = api.get("/v1/rebalance/plan")  # nothing at all: it divided by no capacity
    assert r.status_code == 200, r.text
    assert r.json()["moves"] == [] and "no cluster has capacity" in r.json()["notes"][0]
    assert api.post("/v1/rebalance/run").json()["started"] == []
    reg.put_cluster(Cluster(name="empty", nodes=()))
    reg.put_service(Service(name="lost", workload="echo",
                            instance=Instance(cluster="gone", node="n0", pod="p-lost")))
    seed(reg)
    reg.put_service(Service(name="stray", workload="echo",
                            instance=Instance(cluster="empty", node="n0", pod="p-stray")))
    key = keys.signal("load", "core", "web", None)
    reg.r.zadd(key, {pack([time.time(), -5.0]): time.time()})
    reg.r.sadd(keys.SIGNALS, key)
    r = api.get("/v1/rebalance/plan")
    assert r.status_code == 200, r.text
    notes = " ".join(r.json()["notes"])
    assert "lost" in notes and "stray" in notes and "-5.0" in notes, notes
    assert set(r.json()["utilisation_before"]) == {"core", "edge"}


# --- series per owner ---


def batch(service: str | None, regions: list[str], *, series: str = "latency_ms",
          cluster: str = "core") -> dict[str, Any]:
    samples = [{"series": series, "cluster": cluster, "region": r, "value": 1.0}
               for r in regions]
    if service is not None:
        for s in samples:
            s["service"] = service
    return {"samples": samples}


def signal_keys(reg: Registry) -> set[bytes]:
    return set(reg.r.keys(f"{keys.SIGNAL_PREFIX}*"))


def test_a_batch_past_the_bound_is_refused_whole(reg: Registry) -> None:
    seed(reg)
    api = api_of(reg)  # the default bound: 64
    r = api.post("/v1/signals", json=batch("web", [f"r{i}" for i in range(65)]))
    assert r.status_code == 409, r.text
    assert "service 'web'" in r.json()["detail"] and "64" in r.json()["detail"]
    assert signal_keys(reg) == set() and not reg.r.exists(keys.SIGNALS)  # nothing of it
    r = api.post("/v1/signals", json=batch("web", [f"r{i}" for i in range(64)]))
    assert r.status_code == 202 and r.json() == {"stored": 64}, r.text
    assert len(signal_keys(reg)) == 64
    # one new series more is refused, with the rest of its batch; known ones are taken
    r = api.post("/v1/signals", json=batch("web", ["r0", "r1", "new"]))
    assert r.status_code == 409, r.text
    assert reg.r.zcard(keys.signal("latency_ms", "core", "web", "r0")) == 1
    r = api.post("/v1/signals", json=batch("web", ["r0", "r1", "r63"]))
    assert r.status_code == 202, r.text
    assert reg.r.zcard(keys.signal("latency_ms", "core", "web", "r0")) == 2
    # another owner has its own count: a service, and a cluster's own (service-less) series
    assert api.post("/v1/signals", json=batch("db", ["a", "b"])).status_code == 202
    assert api.post("/v1/signals", json=batch(None, [f"r{i}" for i in range(64)],
                                              series="rtt_ms")).status_code == 202
    assert api.post("/v1/signals", json=batch(None, ["r64"], series="rtt_ms")
                    ).status_code == 409
    assert len(signal_keys(reg)) == 64 + 2 + 64


def test_an_expired_series_frees_its_place(reg: Registry) -> None:
    seed(reg)
    api = api_of(reg, max_series_per_owner=3)
    assert api.post("/v1/signals", json=batch("web", ["a", "b", "c"])).status_code == 202
    assert api.post("/v1/signals", json=batch("web", ["d"])).status_code == 409
    reg.r.delete(keys.signal("latency_ms", "core", "web", "a"))  # as its expiry would
    assert api.post("/v1/signals", json=batch("web", ["d"])).status_code == 202
    owner = {m.decode() for m in reg.r.smembers(keys.signal_owner("core", "web"))}
    assert owner == {keys.signal("latency_ms", "core", "web", r) for r in "bcd"}
    assert 0 < reg.r.ttl(keys.signal_owner("core", "web")) <= automation.KEEP_S + 60


def test_the_store_refuses_what_it_could_not_read_back(reg: Registry) -> None:
    """Below the API too: no key component outside the alphabet is ever written."""
    from mobility.errors import Conflict, Invalid
    from mobility.policies import SeriesKey

    for bad in ({"region": "eu|x"}, {"cluster": "co:re"}, {"service": "w|eb"}):
        sk = SeriesKey(**{"series": "latency_ms", "cluster": "core", **bad})  # type: ignore[arg-type]
        with pytest.raises(Invalid):
            reg.add_samples([(sk, time.time(), 1.0)], keep_s=60, keep_samples=10)
    with pytest.raises(Invalid, match="region"):
        automation.store_samples(reg, [{"series": "cpu", "cluster": "core", "region": "a|b",
                                        "value": 1.0}])
    many = [(SeriesKey(series="cpu", cluster="core", region=f"r{i}"), time.time(), 1.0)
            for i in range(3)]
    with pytest.raises(Conflict):
        reg.add_samples(many, keep_s=60, keep_samples=10, max_series=2)
    assert signal_keys(reg) == set()
