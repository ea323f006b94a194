"""Moves on a real lab with a real Redis, real Celery workers and the HTTP API.

Aspects: a move completes with every phase recorded and nothing lost by the probe; a failure
injected in WIRE rolls back with the source still serving; the orchestration worker killed
with SIGKILL mid-move (before and after the cutover), then restarted, ends in rolled_back or
succeeded and never stuck, with the probe losing nothing; the API refuses bad moves with
404/409; an abort rolls a move back; the events stream (SSE) carries every phase.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.stack import Stack
from dataplane import netlink
from dataplane.lab import topology
from mobility.store import Registry

PHASES = ["admit", "place", "wire", "sync", "cutover", "release"]


class Pair:
    """An echo service in ``core`` and a probe client sending it 1,000 req/s."""

    def __init__(self, api: httpx.Client, stack: Stack, tag: str) -> None:
        self.api, self.stack = api, stack
        self.echo, self.client = f"echo-{tag}", f"client-{tag}"
        r = api.post("/v1/services", json={"name": self.echo, "workload": "echo",
                                           "cluster": "core"})
        assert r.status_code == 201, r.text
        r = api.post("/v1/services", json={"name": self.client, "workload": "probe",
                                           "cluster": "core", "peers": [self.echo],
                                           "params": {"rate": 1000}})
        assert r.status_code == 201, r.text
        self.pod_dir = stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io"
        self.wait_replies(200)

    def progress(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.pod_dir / "progress.json").read_text()))
        except (FileNotFoundError, ValueError):
            return {"received": 0}

    def wait_replies(self, n: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        start = int(self.progress().get("received", 0))
        while int(self.progress().get("received", 0)) < start + n:
            assert time.monotonic() < deadline, "the probe gets no replies"
            time.sleep(0.05)

    def service(self) -> dict[str, Any]:
        r = self.api.get(f"/v1/services/{self.echo}")
        assert r.status_code == 200
        return dict(r.json())

    def finish(self) -> dict[str, Any]:
        """Stop the probe, return its results, remove both services."""
        assert self.api.delete(f"/v1/services/{self.client}").status_code == 204
        result = dict(json.loads((self.pod_dir / "probe.json").read_text()))
        assert self.api.delete(f"/v1/services/{self.echo}").status_code == 204
        return result


def wait_terminal(api: httpx.Client, move_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        move = api.get(f"/v1/moves/{move_id}").json()
        if move["status"] in ("succeeded", "failed", "rolled_back"):
            return dict(move)
        assert time.monotonic() < deadline, f"move stuck: {move}"
        time.sleep(0.1)


def wait_event(api: httpx.Client, move_id: str, kind: str, phase: str, timeout: float = 30) -> None:
    with api.stream("GET", f"/v1/moves/{move_id}/events", timeout=timeout) as resp:
        event = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif (line.startswith("data: ") and event == kind
                  and json.loads(line[6:]).get("phase") == phase):
                return
    raise AssertionError(f"no {kind} event for {phase}")


def release_pause(stack: Stack, move_id: str) -> None:
    """End the hold of a ``pause:<phase>`` fault (the phase goes on)."""
    reg = Registry.from_url(stack.redis_url())
    try:
        reg.release_pause(move_id)
    finally:
        reg.r.close()


def pod_exists(stack: Stack, pod: str) -> bool:
    return netlink.namespace_exists(stack.plan.pod_namespace(pod))


def test_move_completes_with_every_phase_and_nothing_lost(api: httpx.Client,
                                                          lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "ok")
    source = pair.service()["instance"]
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge"})
    assert r.status_code == 202, r.text
    move_id = r.json()["id"]
    # the SSE stream carries a start and an end for every phase, in order
    kinds = []
    with api.stream("GET", f"/v1/moves/{move_id}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("phase_started", "phase_ended"):
                kinds.append((event, json.loads(line[6:])["phase"]))
    assert kinds == [(k, p) for p in PHASES for k in ("phase_started", "phase_ended")]
    move = wait_terminal(api, move_id)
    assert move["status"] == "succeeded", move
    assert sorted(move["phase_ms"]) == sorted(PHASES)
    assert move["cutover_confirmed"] is True
    now = pair.service()["instance"]
    assert now["cluster"] == "edge" and now["pod"] == move["target"]["pod"]
    assert not pod_exists(lab_stack, source["pod"]), "the source pod must be released"
    pair.wait_replies(300)
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["sent"] > 1000


def test_failure_in_wire_rolls_back_with_source_serving(api: httpx.Client,
                                                        lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "rb")
    source = pair.service()["instance"]
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge",
                                    "faults": ["wire"]})
    assert r.status_code == 202, r.text
    move = wait_terminal(api, r.json()["id"])
    assert move["status"] == "rolled_back", move
    assert "wire" in (move["error"] or "")
    assert pair.service()["instance"] == source
    assert pair.service()["moving"] is None, "the lock must be released"
    assert not pod_exists(lab_stack, move["target"]["pod"]), "the target must be removed"
    pair.wait_replies(300)  # the source still answers
    # the service can move again right away
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge"})
    assert wait_terminal(api, r.json()["id"])["status"] == "succeeded"
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result


@pytest.mark.parametrize(("pause", "expected"), [("pause:wire", "rolled_back"),
                                                 ("pause:release", "succeeded")])
def test_orchestrator_killed_mid_move_never_sticks(api: httpx.Client, lab_stack: Stack,
                                                   pause: str, expected: str) -> None:
    pair = Pair(api, lab_stack, f"k{pause[6]}")
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge",
                                    "faults": [pause]})
    assert r.status_code == 202, r.text
    move_id = r.json()["id"]
    wait_event(api, move_id, "fault_paused", pause.split(":")[1])  # its work done, held
    pid = topology.recorded_pid(lab_stack.run_dir, "orchestrator")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while topology.recorded_pid(lab_stack.run_dir, "orchestrator") == pid:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lab_stack.ensure_orchestrator()  # or the supervisor did already
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == expected, move
    where = pair.service()
    assert where["moving"] is None
    assert where["instance"]["cluster"] == ("edge" if expected == "succeeded" else "core")
    gone = move["source"] if expected == "succeeded" else move["target"]
    assert not pod_exists(lab_stack, gone["pod"])
    pair.wait_replies(300)
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result


def test_api_refuses_bad_moves(api: httpx.Client, lab_stack: Stack) -> None:
    r = api.post("/v1/moves", json={"service": "nope", "to_cluster": "edge"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    pair = Pair(api, lab_stack, "bad")
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "mars"})
    assert r.status_code == 404 and "core" in r.json()["detail"]
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "core"})
    assert r.status_code == 409 and "already runs" in r.json()["detail"]
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge",
                                    "faults": ["pause:place"]})
    assert r.status_code == 202
    first = r.json()["id"]
    r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge"})
    assert r.status_code == 409 and first in r.json()["detail"]
    r = api.delete(f"/v1/services/{pair.echo}")
    assert r.status_code == 409
    r = api.post(f"/v1/moves/{first}/abort")
    assert r.status_code == 202 and r.json()["abort_requested"] is True
    move = wait_terminal(api, first)
    assert move["status"] == "rolled_back" and "abort" in move["error"]
    r = api.post(f"/v1/moves/{first}/abort")
    assert r.status_code == 409
    assert api.get("/v1/moves/mv-20000101000000-abcdef").status_code == 404
    assert api.get("/v1/moves/mv-20000101000000-abcdef/events").status_code == 404
    assert api.get("/v1/moves/mv-nope:events").status_code == 422  # not a move id
    result = pair.finish()
    assert result["lost"] == 0, result


def test_services_and_clusters_views(api: httpx.Client, lab_stack: Stack) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "redis": True, "detail": ""}
    clusters = {c["name"]: c for c in api.get("/v1/clusters").json()}
    assert set(clusters) == {"core", "edge"}
    assert [n["name"] for n in clusters["core"]["nodes"]] == ["n1", "n2"]
    pair = Pair(api, lab_stack, "view")
    svc = pair.service()
    assert svc["links"][0]["peer"] == pair.client
    assert svc["links"][0]["ip"].startswith("169.254.")
    clusters = {c["name"]: c for c in api.get("/v1/clusters").json()}
    placed = [s for n in clusters["core"]["nodes"] for s in n["instances"]]
    assert pair.echo in placed and pair.client in placed
    r = api.post("/v1/services", json={"name": pair.echo, "workload": "echo",
                                       "cluster": "core"})
    assert r.status_code == 409
    r = api.post("/v1/services", json={"name": "x1", "workload": "echo", "cluster": "mars"})
    assert r.status_code == 404
    r = api.post("/v1/services", json={"name": "x2", "workload": "nope", "cluster": "core"})
    assert r.status_code == 422
    pair.finish()
    assert api.get(f"/v1/services/{pair.echo}").status_code == 404
    assert Path(pair.pod_dir).exists()
