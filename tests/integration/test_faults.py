"""Crash and fault paths of the move saga on the lab, each held at an exact point.

Aspects: the orchestration worker SIGKILLed in the middle of CUTOVER (peers switched, switch
not yet confirmed) of a stateless service rolls back and switches the peers back, losing
nothing; RELEASE failing after a confirmed cutover goes forward (the reaper retries RELEASE)
and ends succeeded; a failing compensation does not stop the others, keeps the move rolling
back and is retried (by the reaper) until everything is undone; a kill while rolling back ends
rolled back; a move of a service whose link peer is moving is refused (409); the reaper leaves
a young pending move alone (its first task may still be queued) and rolls back one whose task
chain was lost; a retryable phase error is retried in place (same epoch, no rollback); the node
reconciler leaves a moving service and its peers alone, then repairs them once the move has
ended; routes are re-applied after a link repair; a deploy killed halfway (its pod placed) is
undone by the reaper from its journal, leaving no pod and freeing its name; the supervisor
restarts a killed orchestration worker by itself and its move finishes; `mobility status`
shows the processes with their restarts.

Each pause is an injected ``pause:*`` fault that holds until released or until the worker dies;
nothing here waits a fixed time for a race to happen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from cli import supervise
from cli.stack import Stack
from dataplane.lab import topology
from dataplane.netlink import Netlink
from mobility.models import MoveStatus
from mobility.moving import MoveRequests
from mobility.settings import Settings
from mobility.store import Registry
from tests.integration.test_chains import service, wait_health
from tests.integration.test_moves import (
    Pair,
    pod_exists,
    release_pause,
    wait_event,
    wait_terminal,
)


def kill_orchestrator(stack: Stack, *, restart: bool = True) -> int:
    """SIGKILL the orchestration worker and wait until that process is gone; with
    ``restart``, make sure one runs again (the supervisor may have restarted it already)."""
    pid = topology.recorded_pid(stack.run_dir, "orchestrator")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while topology.recorded_pid(stack.run_dir, "orchestrator") == pid:
        assert time.monotonic() < deadline, "the killed orchestrator is still recorded"
        time.sleep(0.05)
    if restart:
        stack.ensure_orchestrator()
    return pid


def events(api: httpx.Client, move_id: str) -> list[dict[str, Any]]:
    """Every event of an ended move (the SSE stream, read to its end)."""
    out = []
    with api.stream("GET", f"/v1/moves/{move_id}/events") as resp:
        event = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event != "end":
                out.append(json.loads(line[6:]))
    return out


def start(api: httpx.Client, service: str, to: str, faults: list[str]) -> str:
    r = api.post("/v1/moves", json={"service": service, "to_cluster": to, "faults": faults})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_kill_mid_cutover_after_the_switch_switches_back(api: httpx.Client,
                                                         lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "cx")
    source = pair.service()["instance"]
    move_id = start(api, pair.echo, "edge", ["pause:switched"])
    wait_event(api, move_id, "fault_paused", "cutover")  # the peers point at the target now
    pair.wait_replies(200)  # ... and the target answers them
    kill_orchestrator(lab_stack)
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == "rolled_back", move
    assert move["cutover_confirmed"] is False
    assert pair.service()["instance"] == source and pair.service()["moving"] is None
    assert not pod_exists(lab_stack, move["target"]["pod"])
    kinds = [(e["kind"], e.get("phase")) for e in events(api, move_id)]
    assert ("reaped", None) in kinds and ("compensated", "cutover") in kinds, kinds
    pair.wait_replies(300)  # the source serves again
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result


def test_release_failing_after_the_cutover_goes_forward(api: httpx.Client,
                                                        lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "rf")
    source = pair.service()["instance"]
    move_id = start(api, pair.echo, "edge", ["release"])
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == "succeeded", move
    assert move["epoch"] >= 1, "RELEASE was finished by the reaper, at a later epoch"
    kinds = [e["kind"] for e in events(api, move_id)]
    assert "reaped" in kinds and "compensated" not in kinds, kinds
    assert pair.service()["instance"]["cluster"] == "edge"
    assert not pod_exists(lab_stack, source["pod"]), "the forward retry released the source"
    pair.wait_replies(300)
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result


def test_a_failing_compensation_is_retried_until_the_move_is_rolled_back(
        api: httpx.Client, lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "cf")
    source = pair.service()["instance"]
    move_id = start(api, pair.echo, "edge", ["wire", "undo:place"])
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == "rolled_back", move
    assert move["epoch"] >= 1, "the reaper ran the compensation again"
    evs = events(api, move_id)
    place = [e["kind"] for e in evs
             if e.get("phase") == "place" and e["kind"].startswith("compensat")]
    assert place[0] == "compensation_failed" and place[-1] == "compensated", evs
    # every step ran in the failed pass too: WIRE was undone before PLACE failed
    first_fail = next(i for i, e in enumerate(evs) if e["kind"] == "compensation_failed")
    assert any(e["kind"] == "compensated" and e["phase"] == "wire" for e in evs[:first_fail])
    assert not pod_exists(lab_stack, move["target"]["pod"]), "the target pod was left behind"
    assert pair.service()["instance"] == source and pair.service()["moving"] is None
    pair.wait_replies(300)  # the source never stopped serving
    result = pair.finish()
    assert result["lost"] == 0, result


def test_moves_of_linked_services_are_serialized(api: httpx.Client, lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "ln")
    first = start(api, pair.echo, "edge", ["pause:place"])
    wait_event(api, first, "fault_paused", "place")
    r = api.post("/v1/moves", json={"service": pair.client, "to_cluster": "edge"})
    assert r.status_code == 409 and "linked to" in r.json()["detail"], r.text
    release_pause(lab_stack, first)
    assert wait_terminal(api, first)["status"] == "succeeded"
    r = api.post("/v1/moves", json={"service": pair.client, "to_cluster": "edge"})
    assert r.status_code == 202, r.text  # once the peer's move has ended
    assert wait_terminal(api, r.json()["id"])["status"] == "succeeded"
    pair.finish()


def test_kill_while_rolling_back_ends_rolled_back(api: httpx.Client, lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "kr")
    source = pair.service()["instance"]
    move_id = start(api, pair.echo, "edge", ["wire", "pause:rollback"])
    wait_event(api, move_id, "fault_paused", "place")  # WIRE undone, PLACE not yet
    assert api.get(f"/v1/moves/{move_id}").json()["status"] == "rolling_back"
    kill_orchestrator(lab_stack)
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == "rolled_back", move
    assert move["epoch"] >= 1
    assert not pod_exists(lab_stack, move["target"]["pod"])
    assert pair.service()["instance"] == source and pair.service()["moving"] is None
    pair.wait_replies(300)
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result


def test_the_reaper_spares_a_young_pending_move_and_rolls_back_a_lost_one(
        api: httpx.Client, lab_stack: Stack, registry: Registry) -> None:
    a = Pair(api, lab_stack, "ra")
    b = Pair(api, lab_stack, "rb")
    # moves recorded as the API records them, but whose task chains never left: lost
    requests = MoveRequests(registry=registry, settings=Settings())
    old = requests.request_move(service=a.echo, to_cluster="edge")
    young = requests.request_move(service=b.echo, to_cluster="edge")
    registry.update_move(old.id, lambda m: setattr(m, "created_at", m.created_at - 300))
    move = wait_terminal(api, old.id, timeout=30)  # beat's reaper runs every 2 s
    assert move["status"] == "rolled_back", move
    assert a.service()["moving"] is None
    # the pass that took the old one saw the young one and left it: its first task may
    # still be queued (the pending grace)
    assert registry.get_move(young.id).status == MoveStatus.PENDING
    assert b.service()["moving"] == young.id
    registry.update_move(young.id, lambda m: setattr(m, "created_at", m.created_at - 300))
    assert wait_terminal(api, young.id, timeout=30)["status"] == "rolled_back"
    for p in (a, b):
        p.wait_replies(200)
        assert p.finish()["lost"] == 0


def test_a_retryable_phase_error_is_retried_in_place(api: httpx.Client,
                                                     lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "fl")
    move_id = start(api, pair.echo, "edge", ["flaky:place"])
    move = wait_terminal(api, move_id)
    assert move["status"] == "succeeded", move
    assert move["epoch"] == 0, "retried by its own task, not taken over by the reaper"
    evs = events(api, move_id)
    assert [e["phase"] for e in evs if e["kind"] == "phase_started"].count("place") == 2, evs
    assert not [e for e in evs if e["kind"] in ("compensated", "reaped")], evs
    pair.wait_replies(300)
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result


def wait_passes(registry: Registry, node: str, n: int, timeout: float = 20) -> None:
    """Until ``node``'s agent has finished ``n`` more reconcile passes."""
    target = registry.reconcile_passes(node) + n
    deadline = time.monotonic() + timeout
    while registry.reconcile_passes(node) < target:
        assert time.monotonic() < deadline, f"{node} reconciled fewer than {n} times"
        time.sleep(0.05)


def test_the_reconciler_leaves_a_moving_service_and_its_peers_alone(
        api: httpx.Client, lab_stack: Stack, registry: Registry) -> None:
    pair = Pair(api, lab_stack, "rc")
    echo, client = service(api, pair.echo), service(api, pair.client)
    echo_ns = lab_stack.plan.pod_namespace(echo["instance"]["pod"])
    client_ns = lab_stack.plan.pod_namespace(client["instance"]["pod"])
    wait_health(api, pair.echo, lambda h: h["ok"])
    move_id = start(api, pair.echo, "edge", ["pause:place"])
    wait_event(api, move_id, "fault_paused", "place")
    # drift on both ends of the moving service's link: the move owns them now
    for ns in (echo_ns, client_ns):
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "del", "nsm-1"], check=True)
    for inst in (echo["instance"], client["instance"]):
        wait_passes(registry, f"{inst['cluster']}.{inst['node']}", 2)
    for ns in (echo_ns, client_ns):
        with Netlink(ns) as nl:
            assert not nl.exists("nsm-1"), f"{ns}: repaired while its service was moving"
    r = api.post(f"/v1/moves/{move_id}/abort")
    assert r.status_code == 202, r.text
    assert wait_terminal(api, move_id)["status"] == "rolled_back"
    # the move has ended: now the reconciler repairs both ends
    for name in (pair.echo, pair.client):
        wait_health(api, name, lambda h: h["ok"] and any(
            v.startswith("repaired") for v in h["links"].values()), timeout=20)
    for ns in (echo_ns, client_ns):
        with Netlink(ns) as nl:
            assert nl.exists("nsm-1")
    pair.wait_replies(300)  # traffic flows again
    pair.finish()


def test_routes_are_reapplied_after_a_link_repair(api: httpx.Client, lab_stack: Stack,
                                                  registry: Registry) -> None:
    r = api.post("/v1/chains", json={"name": "rr", "rate": 200, "elements": [
        {"name": "client", "workload": "probe", "cluster": "core"},
        {"name": "fw", "workload": "middlebox", "cluster": "core"},
        {"name": "server", "workload": "echo", "cluster": "edge"}]})
    assert r.status_code == 201, r.text
    try:
        svc = registry.get_service("rr-client")
        assert svc is not None and svc.instance is not None and svc.routes, svc
        route = svc.routes[0]
        ns = lab_stack.plan.pod_namespace(svc.instance.pod)

        def has_route() -> bool:
            out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-j", "route", "show",
                                  route["dst"]], capture_output=True, text=True, check=True)
            return any(r.get("dev") == route["ifname"] for r in json.loads(out.stdout or "[]"))

        assert has_route()
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "del", route["ifname"]],
                       check=True)
        assert not has_route()  # the kernel dropped the route with its device
        wait_health(api, "rr-client", lambda h: any(v.startswith("repaired")
                                                    for v in h["links"].values()), timeout=20)
        assert has_route(), f"route {route} not re-applied after the repair"
    finally:
        assert api.delete("/v1/chains/rr").status_code == 204


def test_a_deploy_killed_halfway_is_undone_and_frees_its_name(
        lab_stack: Stack, registry: Registry) -> None:
    with lab_stack.api_client(timeout=60, follow=False) as raw:
        r = raw.post("/v1/services", json={"name": "halfway", "workload": "echo",
                                           "cluster": "core", "faults": ["pause:deploy"]})
        assert r.status_code == 202, r.text
        op_link = r.json()["operation"]["links"]["self"]
        deadline = time.monotonic() + 30
        while True:  # held with its pod placed
            svc = registry.get_service("halfway")
            jobs = registry.r.smembers("mob:jobs")
            pods_dir = lab_stack.run_dir / "pods"
            if svc is not None and b"deploy:halfway" in jobs and pods_dir.exists() and any(
                    p.name.startswith("halfway-") for p in pods_dir.iterdir()):
                break
            assert time.monotonic() < deadline, "the deploy never got to its pause"
            time.sleep(0.05)
        pods = [p.name for p in (lab_stack.run_dir / "pods").iterdir()
                if p.name.startswith("halfway-")]
        kill_orchestrator(lab_stack)
        deadline = time.monotonic() + 60
        while registry.get_service("halfway") is not None:  # the reaper undoes it
            assert time.monotonic() < deadline, "the half-done deploy was never undone"
            time.sleep(0.1)
        for pod in pods:
            assert not pod_exists(lab_stack, pod), f"orphan pod {pod}"
        assert b"deploy:halfway" not in registry.r.smembers("mob:jobs")
        op = raw.get(op_link).json()
        assert op["status"] in ("running", "failed"), op  # its worker died with it
    with lab_stack.api_client(timeout=60) as api:  # the name is free again
        r = api.post("/v1/services", json={"name": "halfway", "workload": "echo",
                                           "cluster": "core"})
        assert r.status_code == 201, r.text
        assert api.delete("/v1/services/halfway").status_code == 204


def test_the_supervisor_restarts_a_killed_worker_and_its_move_finishes(
        api: httpx.Client, lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "sv")
    before = supervise.read_state(lab_stack.run_dir).get("orchestrator", {}).get("restarts", 0)
    move_id = start(api, pair.echo, "edge", ["pause:wire"])
    wait_event(api, move_id, "fault_paused", "wire")
    killed = kill_orchestrator(lab_stack, restart=False)  # nobody restarts it by hand
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == "rolled_back", move
    now = topology.recorded_pid(lab_stack.run_dir, "orchestrator")
    assert now is not None and now != killed
    state = supervise.read_state(lab_stack.run_dir)["orchestrator"]
    assert state["restarts"] == before + 1 and state["previous_pid"] == killed, state
    out = subprocess.run([sys.executable, "-m", "cli.main", "status", "--json"],
                         env=dict(os.environ, MOBILITY_ENV_FILE=str(lab_stack.env_file)),
                         capture_output=True, text=True, timeout=60, check=True)
    status = json.loads(out.stdout)
    procs = {p["role"]: p for p in status["processes"]}
    assert procs["orchestrator"]["pid"] == now and procs["orchestrator"]["restarts"] >= 1
    assert procs["supervisor"]["alive"] is True
    assert {"clusters", "services", "moves_in_flight"} <= set(status)
    pair.wait_replies(300)
    assert pair.finish()["lost"] == 0
