"""Where a stateless move's time goes: the switch of the client's traffic, then the clean-up.

Aspects: a move records ``cutover_ms``, the moment (from the API call) CUTOVER switched the
peers, inside CUTOVER's own span and before RELEASE starts, and below ``total_ms``, which adds
the clean-up; the phases up to CUTOVER run back to back in one task (no queue hop between
them) and RELEASE in its own task after it, while the move stays ``running`` in phase
``release`` until its clean-up is done; the orchestration worker SIGKILLed in the middle of
RELEASE (its traffic already on the target) leaves the move to the reaper, which finishes
RELEASE at a later epoch and only then shows it ``succeeded``, its ``cutover_ms`` kept, with
no orphan: no source pod namespace, no workload process of the source, no lease or lock left,
and the probe losing nothing.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from bench import orphans
from cli.stack import Stack
from mobility.store import Registry
from tests.integration.test_faults import events, kill_orchestrator, start
from tests.integration.test_moves import (
    PHASES,
    Pair,
    pod_exists,
    wait_event,
    wait_terminal,
)


def span_ms(move: dict[str, Any], evs: list[dict[str, Any]], kind: str, phase: str) -> float:
    """When (ms after the API call) the first ``kind`` event of ``phase`` was journaled."""
    ts = next(float(e["ts"]) for e in evs if e["kind"] == kind and e.get("phase") == phase)
    return (ts - float(move["created_at"])) * 1000


def left_of(stack: Stack, move: dict[str, Any]) -> list[orphans.Orphan]:
    """What the lab holds of ``move``'s source pod, or of the move in Redis, once it ended."""
    reg = Registry.from_url(stack.redis_url())
    try:
        found = [*orphans.pods(stack, reg),
                 *orphans.redis_keys(reg, state_ttl_s=3600, now=0.0)]
    finally:
        reg.r.close()
    names = (move["source"]["pod"], move["id"], move["service"])
    return [o for o in found if any(n in o.what or n in o.detail for n in names)]


def orchestrator_tasks(stack: Stack, move_id: str) -> list[str]:
    """The names of the orchestrator's tasks that ran for ``move_id``, in order."""
    out = []
    for line in (stack.logs / "orchestrator.log").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        msg = str(row.get("msg", ""))
        if row.get("move_id") == move_id and msg.startswith("Task ") and " succeeded " in msg:
            out.append(msg.split()[1].split("[")[0])
    return out


def test_cutover_ms_is_the_switch_before_the_clean_up(api: httpx.Client,
                                                      lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "cms")
    source = pair.service()["instance"]
    move_id = start(api, pair.echo, "edge", [])
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == "succeeded", move
    evs = events(api, move_id)
    cutover = move["cutover_ms"]
    assert cutover is not None and 0 < cutover < move["total_ms"], move
    # the switch happens inside CUTOVER, and the clean-up only after it
    assert span_ms(move, evs, "phase_started", "cutover") <= cutover
    assert cutover <= span_ms(move, evs, "phase_ended", "cutover")
    assert cutover <= span_ms(move, evs, "phase_started", "release")
    assert [(e["kind"], e["phase"]) for e in evs if e["kind"].startswith("phase_")] == [
        (k, p) for p in PHASES for k in ("phase_started", "phase_ended")]
    # one task up to the switch, RELEASE and the completion after it
    assert orchestrator_tasks(lab_stack, move_id) == ["move.run", "move.release",
                                                      "move.complete"]
    assert not pod_exists(lab_stack, source["pod"])
    pair.wait_replies(300)
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result


def test_worker_killed_in_release_is_finished_by_the_reaper_without_orphans(
        api: httpx.Client, lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "krel")
    source = pair.service()["instance"]
    move_id = start(api, pair.echo, "edge", ["pause:release"])
    wait_event(api, move_id, "fault_paused", "release")  # the source removed, RELEASE held
    held = api.get(f"/v1/moves/{move_id}").json()
    # the client's traffic is on the target, but the move is not done: it shows running
    assert held["status"] == "running" and held["phase"] == "release", held
    assert held["cutover_confirmed"] is True and held["cutover_ms"] is not None, held
    assert held["total_ms"] is None
    assert pair.service()["instance"]["pod"] == held["target"]["pod"]
    pair.wait_replies(200)  # ... and the target answers
    kill_orchestrator(lab_stack)
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == "succeeded", move
    assert move["epoch"] >= 1, "the reaper finished RELEASE, at a later epoch"
    assert move["cutover_ms"] == held["cutover_ms"], "the switch is the first epoch's"
    assert move["total_ms"] is not None and move["total_ms"] > move["cutover_ms"]
    kinds = [e["kind"] for e in events(api, move_id)]
    assert "reaped" in kinds and "compensated" not in kinds, kinds
    assert not pod_exists(lab_stack, source["pod"])
    assert left_of(lab_stack, move) == []
    pair.wait_replies(300)
    result = pair.finish()
    assert result["lost"] == 0 and result["duplicated"] == 0, result
