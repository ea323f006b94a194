"""What ``GET /metrics`` shows and how its numbers are recorded, on a real Redis.

Aspects: histogram buckets (a value lands in the first bucket that holds it; cumulative counts
end with ``+Inf`` = count); a move's end is counted once, in the transaction that makes it
terminal, with its phases, freeze window, state bytes and rounds, and a second
``finish_move`` of the same move adds nothing; repairs and probe reports add up (a probe once
per move); each component's Redis ACL user may do its part (the orchestrator end a move and
count it, an agent count repairs, the API read everything a scrape needs, node queues'
lengths included) and the API may not write the aggregates; through the app, ``/metrics``
is 401 without a token and, for a viewer, shows every family in Prometheus' format with the
move counted, and request latency labelled by route template (never the raw path).
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from api.app import create_app
from mobility import keys, tokens
from mobility.models import Cluster, Move, MoveStatus, Node, Service
from mobility.settings import Settings
from mobility.store import Registry, acl
from mobility.store.metrics import (
    FREEZE_BUCKETS_MS,
    PHASE_BUCKETS_MS,
    Histogram,
    MetricStore,
    bucket_of,
)
from mobility.tokens import Role
from tests.conftest import RedisServer
from workers.routing import ORCHESTRATION, node_queue

DB = 9  # this module's database on the session's Redis

FAMILIES = ("mobility_moves", "mobility_moves_in_flight", "mobility_services",
            "mobility_move_phase_duration_seconds", "mobility_move_freeze_window_seconds",
            "mobility_state_bytes_moved", "mobility_precopy_rounds",
            "mobility_reconciler_repairs", "mobility_probe_requests", "mobility_queue_depth",
            "mobility_api_request_duration_seconds", "mobility_registry_up")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    yield url
    r.flushdb()
    r.close()


@pytest.fixture
def reg(redis_url: str) -> Iterator[Registry]:
    r = Registry.from_url(redis_url)
    yield r
    r.r.close()


def a_service(reg: Registry, name: str = "svc") -> None:
    reg.put_cluster(Cluster(name="core", nodes=(Node(name="n1", cluster="core",
                                                     underlay_ip="198.19.1.2"),)))
    reg.put_service(Service(name=name, workload="echo"), create=True)


def ended_move(reg: Registry, *, service: str = "svc", origin: str = "policy") -> Move:
    """A move created, run with a stateful move's numbers, and ended (succeeded)."""
    move = reg.create_move(Move(id=f"mv-20260101000000-{secrets.token_hex(3)}",
                                service=service, from_cluster="core", to_cluster="edge",
                                origin=origin))

    def ran(m: Move) -> None:
        m.status = MoveStatus.RUNNING
        m.phase_ms = {"admit": 3.0, "place": 120.0, "wire": 40.0, "sync": 900.0,
                      "cutover": 30.0, "release": 7.0}
        m.freeze_ms = 12.0
        m.state_bytes = 4096
        m.sync_rounds = 3

    reg.update_move(move.id, ran)
    return reg.finish_move(move.id, MoveStatus.SUCCEEDED)


def test_buckets_and_cumulative_counts() -> None:
    assert bucket_of(5.0, PHASE_BUCKETS_MS) == "5"  # a bound holds its own value
    assert bucket_of(5.1, PHASE_BUCKETS_MS) == "10"
    assert bucket_of(0.0, FREEZE_BUCKETS_MS) == "1"
    assert bucket_of(10**9, PHASE_BUCKETS_MS) == "+Inf"
    hist = Histogram(buckets={"1": 2, "10": 1, "+Inf": 1}, sum=1e6, count=4)
    cum = dict(hist.cumulative((1, 5, 10)))
    assert cum == {"1": 2, "5": 2, "10": 3, "+Inf": 4}


def test_a_move_is_counted_once_with_its_numbers(reg: Registry) -> None:
    a_service(reg)
    move = ended_move(reg)
    again = reg.finish_move(move.id, MoveStatus.SUCCEEDED)  # a retried end: no new count
    assert again.status == MoveStatus.SUCCEEDED
    snap = MetricStore(reg.r).snapshot([ORCHESTRATION])
    assert snap.moves == {("succeeded", "policy"): 1}
    assert snap.phases["sync"].count == 1 and snap.phases["sync"].sum == 900.0
    assert snap.phases["sync"].buckets == {"1000": 1}
    assert snap.phases["admit"].buckets == {"5": 1}
    assert snap.freeze.count == 1 and snap.freeze.buckets == {"25": 1}
    assert (snap.state_bytes, snap.sync_rounds) == (4096, 3)
    assert snap.services == 1 and snap.active_moves == 0


def test_a_move_still_running_is_not_counted(reg: Registry) -> None:
    a_service(reg)
    reg.create_move(Move(id="mv-20260101000000-abcdef", service="svc", from_cluster="core",
                         to_cluster="edge"))
    snap = MetricStore(reg.r).snapshot([])
    assert snap.moves == {} and snap.active_moves == 1 and snap.phases["sync"].count == 0


def test_repairs_and_probes_add_up(reg: Registry) -> None:
    store = MetricStore(reg.r)
    store.count_repairs("core.n1", repaired=2)
    store.count_repairs("core.n1", repaired=1, broken=1)
    store.count_repairs("edge.n1")  # nothing drifted: nothing written
    assert store.report_probe("mv-20260101000000-aaaaaa", sent=1000, lost=2, duplicated=1)
    assert not store.report_probe("mv-20260101000000-aaaaaa", sent=1000, lost=2)
    assert store.report_probe("mv-20260101000000-bbbbbb", sent=500, lost=0)
    snap = store.snapshot([])
    assert snap.repairs == {("core.n1", "repaired"): 3, ("core.n1", "broken"): 1}
    assert snap.probes == {"sent": 1500, "lost": 2, "duplicated": 1}


@pytest.fixture
def reg0(redis_server: RedisServer) -> Iterator[Registry]:
    """The registry on database 0: the components' users may not SELECT another."""
    r = Registry.from_url(redis_server.url)
    r.r.flushdb()
    yield r
    r.r.flushdb()
    r.r.close()


def test_each_component_may_do_its_part_under_its_acl(redis_server: RedisServer,
                                                      reg0: Registry) -> None:
    reg = reg0
    admin = reg.r
    users = acl.component_users(
        orchestration=ORCHESTRATION, node_queues=node_queue("*", "*"),
        agents={acl.agent_user("core", "n1"): acl.CeleryRole(
            consumes=(node_queue("core", "n1"),), worker="agent-core-n1@lab")})
    tag = secrets.token_hex(3)
    made = {}
    for user in (acl.API, acl.ORCHESTRATOR, acl.agent_user("core", "n1")):
        name, password = f"{user}-t{tag}", secrets.token_urlsafe(12)
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                              *users[user])
        made[user] = redis.Redis.from_url(redis_server.url_for(name, password))
    try:
        a_service(reg)
        admin.rpush(node_queue("core", "n1"), "a task")
        admin.rpush(ORCHESTRATION, "one", "two")
        # a move's start waits in the queue's priority-3 list (workers.app): counted too
        admin.rpush(f"{ORCHESTRATION}{keys.KOMBU_PRIORITY_SEP}3", "a start")
        orchestrator = Registry(made[acl.ORCHESTRATOR])
        ended_move(orchestrator)
        MetricStore(made[acl.agent_user("core", "n1")]).count_repairs("core.n1", repaired=1)
        snap = MetricStore(made[acl.API]).snapshot([ORCHESTRATION, node_queue("core", "n1")],
                                                   prioritised=[ORCHESTRATION])
        assert snap.moves == {("succeeded", "policy"): 1}
        assert snap.repairs == {("core.n1", "repaired"): 1}
        assert snap.queues == {ORCHESTRATION: 3, node_queue("core", "n1"): 1}
        with pytest.raises(redis.exceptions.NoPermissionError):
            made[acl.API].hincrby(keys.METRICS_MOVES, "succeeded|api", 1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            made[acl.API].lpop(node_queue("core", "n1"))  # a length, never a task
    finally:
        for user, client in made.items():
            client.close()
            admin.execute_command("ACL", "DELUSER", f"{user}-t{tag}")


def test_the_endpoint_shows_every_family_to_a_viewer(redis_url: str, reg: Registry) -> None:
    a_service(reg)
    ended_move(reg, origin="api")
    MetricStore(reg.r).count_repairs("core.n1", repaired=1)
    record, secret = tokens.mint(role=Role.VIEWER, name="metrics test")
    reg.put_token(record)
    app = create_app(Settings(redis_url=redis_url))  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}
                          ).status_code == 401
        auth = {"Authorization": f"Bearer {secret}"}
        assert client.get("/v1/services/svc", headers=auth).status_code == 200
        assert client.get("/v1/services/nothing-here", headers=auth).status_code == 404
        resp = client.get("/metrics", headers=auth)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert set(FAMILIES) <= set(families), set(FAMILIES) - set(families)

    def value(family: str, sample: str, **labels: str) -> float:
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no {sample} {labels} in {families[family].samples}")

    assert value("mobility_moves", "mobility_moves_total", status="succeeded",
                 origin="api") == 1
    assert value("mobility_move_phase_duration_seconds",
                 "mobility_move_phase_duration_seconds_count", phase="sync") == 1
    assert value("mobility_move_phase_duration_seconds",
                 "mobility_move_phase_duration_seconds_bucket", phase="sync", le="1.0") == 1
    assert value("mobility_move_phase_duration_seconds",
                 "mobility_move_phase_duration_seconds_bucket", phase="sync", le="0.5") == 0
    assert value("mobility_move_freeze_window_seconds",
                 "mobility_move_freeze_window_seconds_sum") == pytest.approx(0.012)
    assert value("mobility_state_bytes_moved", "mobility_state_bytes_moved_total") == 4096
    assert value("mobility_precopy_rounds", "mobility_precopy_rounds_total") == 3
    assert value("mobility_reconciler_repairs", "mobility_reconciler_repairs_total",
                 node="core.n1", outcome="repaired") == 1
    assert value("mobility_queue_depth", "mobility_queue_depth",
                 queue=node_queue("core", "n1")) == 0
    assert value("mobility_services", "mobility_services") == 1
    routes = {s.labels["route"] for s in families["mobility_api_request_duration_seconds"]
              .samples}
    assert "/v1/services/{name}" in routes
    assert not any("nothing-here" in r or r == "/v1/services/svc" for r in routes)
    assert value("mobility_api_request_duration_seconds",
                 "mobility_api_request_duration_seconds_count", method="GET",
                 route="/v1/services/{name}", code="404") == 1
