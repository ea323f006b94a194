"""``GET /metrics`` on the lab stack: a real move through the API, counted by the worker that
ended it, read back by the API under its own Redis ACL user.

Aspects: without a token (or with a bad one) ``/metrics`` is 401; with a ``viewer`` token it
is Prometheus' text format with every family; a succeeded move adds one to the moves counted
by status and origin and one observation to each phase's histogram; queue depths name the
orchestration queue and every node's queue; the API's own latency histogram carries the
route templates it served; a link end deleted on the node the service moved to is repaired
by that node's agent and counted as its repair (under the agent's own ACL user); a probe's
report (what the demo's client saw) shows as requests
sent and lost.
"""

from __future__ import annotations

import subprocess

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cli.client import ApiClient
from cli.stack import Stack
from mobility import tokens
from mobility.store import Registry
from mobility.store.metrics import MetricStore
from mobility.tokens import Role
from tests.integration.test_chains import wait_health
from tests.integration.test_moves import PHASES, Pair, wait_terminal
from workers.routing import ORCHESTRATION, node_queue

FAMILIES = ("mobility_moves", "mobility_moves_in_flight", "mobility_services",
            "mobility_move_phase_duration_seconds", "mobility_move_freeze_window_seconds",
            "mobility_state_bytes_moved", "mobility_precopy_rounds",
            "mobility_reconciler_repairs", "mobility_probe_requests", "mobility_queue_depth",
            "mobility_api_request_duration_seconds", "mobility_registry_up")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> tuple[set[str], Samples]:
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(resp.text))
    samples = {(s.name, frozenset(s.labels.items())): float(s.value)
               for f in families for s in f.samples}
    return {f.name for f in families}, samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_move_shows_in_the_metrics(api: httpx.Client, lab_stack: Stack,
                                     registry: Registry) -> None:
    with httpx.Client(base_url=lab_stack.api_url, timeout=30) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.get("/metrics", headers={"Authorization": "Bearer mob_x"}
                             ).status_code == 401
    record, secret = tokens.mint(role=Role.VIEWER, name="metrics test")
    registry.put_token(record)
    with ApiClient(lab_stack.api_url, token=secret, timeout=30) as viewer:
        names, before = scrape(viewer)
        assert set(FAMILIES) <= names, set(FAMILIES) - names
        pair = Pair(api, lab_stack, "met")
        r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge"})
        assert r.status_code == 202, r.text
        move = wait_terminal(api, r.json()["id"])
        assert move["status"] == "succeeded", move
        # drift in the moved echo's pod: its node's agent repairs it, and counts it
        inst = pair.service()["instance"]
        node = f"{inst['cluster']}.{inst['node']}"
        subprocess.run(["ip", "netns", "exec", lab_stack.plan.pod_namespace(inst["pod"]),
                        "ip", "link", "del", "nsm-1"], check=True)
        wait_health(api, pair.echo, lambda h: any(v.startswith("repaired")
                                                  for v in h["links"].values()), timeout=20)
        result = pair.finish()
        assert MetricStore(registry.r).report_probe(move["id"], sent=int(result["sent"]),
                                                    lost=int(result["lost"]),
                                                    duplicated=int(result["duplicated"]))
        names, after = scrape(viewer)
    assert set(FAMILIES) <= names, set(FAMILIES) - names
    total = "mobility_moves_total"
    assert get(after, total, status="succeeded", origin="api") == get(
        before, total, status="succeeded", origin="api") + 1
    for phase in PHASES:
        count = "mobility_move_phase_duration_seconds_count"
        assert get(after, count, phase=phase) == get(before, count, phase=phase) + 1, phase
        inf = "mobility_move_phase_duration_seconds_bucket"
        assert get(after, inf, phase=phase, le="+Inf") == get(after, count, phase=phase)
    queues = {dict(labels)["queue"] for name, labels in after if name == "mobility_queue_depth"}
    assert ORCHESTRATION in queues
    assert any(q.startswith(node_queue("core", "")) for q in queues), queues
    assert any(q.startswith(node_queue("edge", "")) for q in queues), queues
    repairs = "mobility_reconciler_repairs_total"
    assert get(after, repairs, node=node, outcome="repaired") >= get(
        before, repairs, node=node, outcome="repaired") + 1
    sent = "mobility_probe_requests_total"
    assert get(after, sent, result="sent") - get(before, sent, result="sent") == result["sent"]
    assert get(after, sent, result="lost") - get(before, sent, result="lost") == result["lost"]
    routes = {dict(labels).get("route") for name, labels in after
              if name == "mobility_api_request_duration_seconds_count"}
    assert {"/metrics", "/v1/moves", "/v1/moves/{move_id}"} <= routes, routes
    assert not any(move["id"] in (r or "") for r in routes)
    assert get(after, "mobility_registry_up") == 1
