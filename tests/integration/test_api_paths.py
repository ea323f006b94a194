"""API paths that start or shape moves, on the lab.

Aspects: ``POST /v1/rebalance/run`` starts the plan's moves and they succeed;
``POST /v1/policies/evaluate?dry_run=false`` starts the move a policy calls for (beat stopped,
so only the API decides); starting decided or planned moves, a refused one does not stop the
rest; a cron schedule is stored as a cron entry for beat, bad schedules are refused with a
422, and a schedule can be deleted once; a maintenance window keeps the planner off a cluster
and a window that ends before it starts is refused; ``/healthz`` answers 503 when Redis is
unreachable; the events stream resumes after ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from pydantic import SecretStr

from api.app import create_app
from cli.stack import Stack
from mobility import automation, keys
from mobility.models import MoveStatus
from mobility.moving import MoveRequests
from mobility.policies import Decision, Outcome
from mobility.rebalancing import Plan, PlannedMove
from mobility.settings import Settings
from mobility.store import Registry
from tests.conftest import free_port
from tests.integration.test_automation import offload_policy, sample
from tests.integration.test_moves import Pair, wait_terminal


def deploy_echoes(api: httpx.Client, names: list[str]) -> None:
    for n in names:
        r = api.post("/v1/services", json={"name": n, "workload": "echo", "cluster": "core"})
        assert r.status_code == 201, r.text


def test_rebalance_run_starts_the_plan(api: httpx.Client) -> None:
    names = [f"rr-{i}" for i in range(4)]
    deploy_echoes(api, names)
    try:
        assert api.put("/v1/rebalance/config", json={"max_moves": 2}).status_code == 200
        r = api.post("/v1/rebalance/run")
        assert r.status_code == 200, r.text
        run = r.json()
        assert len(run["plan"]["moves"]) == 2 and len(run["started"]) == 2, run
        assert run["refused"] == []
        for move_id in run["started"]:
            move = wait_terminal(api, move_id)
            assert move["status"] == "succeeded" and move["origin"] == "rebalance", move
        where = sorted(api.get(f"/v1/services/{n}").json()["instance"]["cluster"]
                       for n in names)
        assert where == ["core", "core", "edge", "edge"], where
    finally:
        for n in names:
            api.delete(f"/v1/services/{n}")


def test_evaluate_for_real_starts_the_policys_move(api: httpx.Client,
                                                   lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "ev")
    lab_stack.stop_process("beat")  # no policy tick: only this request may start the move
    try:
        policy = dict(offload_policy(pair.echo), id="evaluate")
        assert api.post("/v1/policies", json=policy).status_code == 201
        now = time.time()
        burst = [sample(service=pair.echo, region="eu", value=45.0, ts=now - 4 + i * 0.1)
                 for i in range(41)]
        assert api.post("/v1/signals", json={"samples": burst}).json() == {"stored": 41}
        dry = api.post("/v1/policies/evaluate", params={"dry_run": "true"}).json()
        assert "started" not in dry
        assert api.get("/v1/moves", params={"limit": 200}).json() is not None
        r = api.post("/v1/policies/evaluate", params={"dry_run": "false"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert len(out["started"]) == 1 and out["refused"] == [], out
        move = wait_terminal(api, out["started"][0])
        assert move["status"] == "succeeded", move
        assert (move["origin"], move["policy_id"]) == ("policy", "evaluate")
    finally:
        api.delete("/v1/policies/evaluate")
        lab_stack.ensure_beat()
    pair.wait_replies(300)
    assert pair.finish()["lost"] == 0


def test_a_refused_move_does_not_stop_the_rest(api: httpx.Client, registry: Registry) -> None:
    names = ["rf-a", "rf-b"]
    deploy_echoes(api, names)
    started_ids: list[str] = []
    requests = MoveRequests(registry=registry, settings=Settings())
    try:
        plan = Plan(now=time.time(), moves=tuple(
            PlannedMove(service=s, from_cluster="core", to_cluster="edge", load=1.0,
                        reason="test") for s in ("rf-gone", "rf-a")),
            imbalance_before=1.0, imbalance_after=0.0, max_utilisation_before=1.0,
            max_utilisation_after=0.5, utilisation_before={}, utilisation_after={})
        started, refused = automation.run_plan(requests, plan, started_ids.append)
        assert [r["service"] for r in refused] == ["rf-gone"], refused
        assert len(started) == 1 and started == started_ids
        decisions = [Decision(policy_id="p", service=s, outcome=Outcome.MOVE, reason="test",
                              from_cluster="core", to_cluster="edge") for s in ("rf-a", "rf-b")]
        started2, refused2 = automation.start_decided(requests, decisions, started_ids.append)
        # rf-a is locked by the planned move above: refused; rf-b still starts
        assert [r["service"] for r in refused2] == ["rf-a"], refused2
        assert "already moving" in refused2[0]["reason"]
        assert len(started2) == 1
        for move_id in [*started, *started2]:  # recorded, never dispatched: end them here
            registry.update_move(move_id, lambda m: setattr(m, "status",
                                                            MoveStatus.ROLLING_BACK))
            registry.finish_move(move_id, MoveStatus.ROLLED_BACK)
    finally:
        for n in names:
            api.delete(f"/v1/services/{n}")


def test_schedules_cron_and_refusals(api: httpx.Client, registry: Registry) -> None:
    r = api.put("/v1/rebalance/schedule", json={"cron": "*/5 * * * *"})
    assert r.status_code == 200, r.text
    # what beat reads: celery-redbeat's entry, a hash with the task and its schedule
    stored = registry.r.hget(f"{keys.REDBEAT_PREFIX}rebalance", "definition")
    assert stored is not None
    definition = json.loads(stored)
    assert definition["task"] == "rebalance.run"
    assert definition["schedule"]["__type__"] == "crontab", definition  # not an interval
    assert definition["schedule"]["minute"] == "*/5"
    assert api.delete("/v1/rebalance/schedule").status_code == 204
    assert api.delete("/v1/rebalance/schedule").status_code == 404
    for bad in ({"cron": "61 * * * *"}, {"cron": "* * *"}, {},
                {"cron": "* * * * *", "every_s": 5}):
        r = api.put("/v1/rebalance/schedule", json=bad)
        assert r.status_code == 422, (bad, r.text)


def test_a_maintenance_window_keeps_the_planner_off_a_cluster(api: httpx.Client) -> None:
    names = [f"mw-{i}" for i in range(4)]
    deploy_echoes(api, names)
    now = time.time()
    try:
        r = api.put("/v1/rebalance/config", json={
            "max_moves": 4, "windows": [{"cluster": "edge", "start": now + 60, "end": now}]})
        assert r.status_code == 422 and "ends before it starts" in r.text
        r = api.put("/v1/rebalance/config", json={"max_moves": 4, "windows": [
            {"cluster": "edge", "start": now - 60, "end": now + 3600}]})
        assert r.status_code == 200, r.text
        assert api.get("/v1/rebalance/config").json()["windows"][0]["cluster"] == "edge"
        plan = api.get("/v1/rebalance/plan").json()
        assert [m for m in plan["moves"] if m["to_cluster"] == "edge"] == [], plan
        assert any("edge" in n for n in plan["notes"]), plan
        assert api.put("/v1/rebalance/config", json={"max_moves": 4}).status_code == 200
        plan = api.get("/v1/rebalance/plan").json()
        assert [m for m in plan["moves"] if m["to_cluster"] == "edge"], plan
    finally:
        api.put("/v1/rebalance/config", json={"max_moves": 4})
        for n in names:
            api.delete(f"/v1/services/{n}")


def test_healthz_answers_503_without_redis() -> None:
    dead = f"redis://:pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(Settings(redis_url=SecretStr(dead)))

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            return await c.get("/healthz")

    r = asyncio.run(get())
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "degraded" and body["redis"] is False and body["detail"]


def _stream(api: httpx.Client, move_id: str,
            last_event_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out, ident = [], ""
    with api.stream("GET", f"/v1/moves/{move_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data: ") and ident:
                out.append((ident, json.loads(line[6:])))
                ident = ""
    return out


def test_the_event_stream_resumes_after_last_event_id(api: httpx.Client,
                                                      lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "sse")
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge"})
    move_id = r.json()["id"]
    assert wait_terminal(api, move_id)["status"] == "succeeded"
    everything = _stream(api, move_id)
    assert len(everything) > 6
    resumed = _stream(api, move_id, last_event_id=everything[3][0])
    assert resumed == everything[4:]
    pair.finish()
