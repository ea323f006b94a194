"""Policies, signals and scheduled rebalancing on the lab.

Aspects: bad signals get a clear 4xx and are not stored; a policy is validated, stored,
listed, replaced and deleted; a burst of high-latency signals makes the policy tick (Celery
beat) start exactly one move to an edge cluster, recorded with the policy and the signal
values that triggered it; after a move by hand, the cooldown holds back the policy's next
move through two policy ticks (counted, not slept for), and the dry run says "cooldown";
a rebalance schedule set through the API (celery-redbeat) makes beat rebalance a skewed
placement, and the plan it ran is visible.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from cli.stack import Stack
from mobility.store import Registry
from tests.integration.test_moves import Pair, wait_terminal


def sample(**kw: Any) -> dict[str, Any]:
    return {"series": "latency_ms", "cluster": "core", "value": 5.0, **kw}


@pytest.mark.parametrize(("samples", "status", "words"), [
    ([sample(series="latncy_ms")], 422, "unknown series"),
    ([sample(ts=time.time() + 3600)], 422, "future"),
    ([sample(cluster="mars")], 404, "mars"),
    ([sample(service="ghost")], 404, "ghost"),
    ([sample()] * 1001, 422, ""),
    ([], 422, ""),
])
def test_bad_signals_are_refused(api: httpx.Client, samples: list[dict[str, Any]], status: int,
                                 words: str) -> None:
    r = api.post("/v1/signals", json={"samples": samples})
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"])


def test_non_finite_signal_is_refused(api: httpx.Client) -> None:
    body = b'{"samples": [{"series": "latency_ms", "cluster": "core", "value": NaN}]}'
    r = api.post("/v1/signals", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text


def offload_policy(service: str) -> dict[str, Any]:
    return {
        "id": "offload", "name": "latency offload", "services": [service],
        "condition": {"series": "latency_ms", "aggregate": "p95", "comparator": ">",
                      "threshold": 20, "duration_s": 2, "window_s": 2, "region": "eu"},
        "target": {"labels": {"tier": "edge"}, "nearest_by": "capacity"},
        "cooldown_s": 120,
    }


def test_policy_crud(api: httpx.Client) -> None:
    body = offload_policy("nobody")
    body["id"] = "crud"
    assert api.post("/v1/policies", json=body).status_code == 201
    assert api.post("/v1/policies", json=body).status_code == 409
    assert "crud" in [p["id"] for p in api.get("/v1/policies").json()]
    body["cooldown_s"] = 30
    r = api.put("/v1/policies/crud", json=body)
    assert r.status_code == 200 and r.json()["cooldown_s"] == 30
    bad = dict(body, condition=dict(body["condition"], aggregate="p42"))
    r = api.put("/v1/policies/crud", json=bad)
    assert r.status_code == 422 and "p42" in r.json()["detail"]
    assert api.delete("/v1/policies/crud").status_code == 204
    assert api.get("/v1/policies/crud").status_code == 404
    assert api.delete("/v1/policies/crud").status_code == 404


def moves_of(api: httpx.Client, service: str) -> list[dict[str, Any]]:
    return [m for m in api.get("/v1/moves", params={"limit": 200}).json()
            if m["service"] == service]


def test_latency_burst_triggers_exactly_one_move(api: httpx.Client, lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "pol")
    assert api.post("/v1/policies", json=offload_policy(pair.echo)).status_code == 201
    try:
        now = time.time()
        burst = [sample(service=pair.echo, region="eu", value=45.0, ts=now - 4 + i * 0.1)
                 for i in range(41)]
        assert api.post("/v1/signals", json={"samples": burst}).json() == {"stored": 41}
        deadline = time.monotonic() + 30
        while not moves_of(api, pair.echo):
            assert time.monotonic() < deadline, "the policy tick started no move"
            time.sleep(0.2)
        (move,) = moves_of(api, pair.echo)
        move = wait_terminal(api, move["id"])
        assert move["status"] == "succeeded", move
        assert (move["origin"], move["policy_id"], move["to_cluster"]) == (
            "policy", "offload", "edge")
        assert move["trigger"]["reading"]["value"] >= 45.0
        # moved back by hand; high latency where it runs now would move it to the edge again,
        # but the cooldown (from the last move, whoever started it) holds the policy back
        by_hand = time.time()
        r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "core"})
        assert r.status_code == 202, r.text
        assert wait_terminal(api, r.json()["id"])["status"] == "succeeded"
        # samples count only after the last move and must span the condition's duration (2 s):
        # without a cooldown these would start a move
        while time.time() < by_hand + 3:
            time.sleep(0.1)
        now = time.time()
        more = [sample(service=pair.echo, cluster="core", region="eu", value=60.0,
                       ts=by_hand + 0.2 + i * (now - by_hand - 0.2) / 30) for i in range(31)]
        assert api.post("/v1/signals", json={"samples": more}).json() == {"stored": 31}
        reg = Registry.from_url(lab_stack.redis_url())
        try:
            ticks = reg.policy_ticks()
            deadline = time.monotonic() + 30
            while reg.policy_ticks() < ticks + 2:  # two whole ticks saw the new samples
                assert time.monotonic() < deadline, "beat ran no policy tick"
                time.sleep(0.1)
        finally:
            reg.r.close()
        assert len(moves_of(api, pair.echo)) == 2, moves_of(api, pair.echo)
        dry = api.post("/v1/policies/evaluate", params={"dry_run": "true"}).json()
        mine = [d for d in dry["decisions"] if d["service"] == pair.echo]
        assert [d["outcome"] for d in mine] == ["cooldown"], mine
    finally:
        api.delete("/v1/policies/offload")
    pair.wait_replies(300)
    result = pair.finish()
    assert result["lost"] == 0, result


def test_scheduled_rebalance_evens_a_skewed_placement(api: httpx.Client,
                                                       lab_stack: Stack) -> None:
    names = [f"rb-{i}" for i in range(4)]
    for n in names:
        r = api.post("/v1/services", json={"name": n, "workload": "echo", "cluster": "core"})
        assert r.status_code == 201, r.text
    try:
        assert api.put("/v1/rebalance/config", json={"max_moves": 2}).status_code == 200
        plan = api.get("/v1/rebalance/plan").json()
        assert len(plan["moves"]) == 2
        assert plan["imbalance_after"] < plan["imbalance_before"]
        r = api.put("/v1/rebalance/schedule", json={"every_s": 2})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 40
        while api.get("/v1/rebalance/last").status_code != 200:
            assert time.monotonic() < deadline, "beat never ran the rebalancer"
            time.sleep(0.3)
        assert api.delete("/v1/rebalance/schedule").status_code == 204
        last = api.get("/v1/rebalance/last").json()
        for move_id in last["started"]:
            assert wait_terminal(api, move_id)["status"] == "succeeded"
        where = [api.get(f"/v1/services/{n}").json()["instance"]["cluster"] for n in names]
        assert sorted(where) == ["core", "core", "edge", "edge"], where
    finally:
        api.delete("/v1/rebalance/schedule")
        for n in names:
            api.delete(f"/v1/services/{n}")
