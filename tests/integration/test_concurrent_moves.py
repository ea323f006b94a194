"""Concurrent moves on the lab: a move held in a slow phase does not hold up other moves.

Aspects: with HELD moves of other services each held inside a phase (an injected
``pause:<phase>`` keeps the phase, its lease and its worker thread until released), every one
of them reaches its phase, so phases of different moves run side by side instead of waiting
for each other's worker; a further move of another service then runs from start to end and
succeeds while all of them are still held (each still in its phase, not done), under a probe
client that loses and duplicates nothing; once released, the held moves finish too
(succeeded). The holds are in the orchestrator, not on a node: the free move's node agents
(the same nodes the held moves use, in a lab of two nodes per cluster) are not held up.

HELD is more than the orchestration worker used to have threads (8): with that pool the ninth
held move never started its phase and the free move waited behind them all (the old code
fails here). Nothing waits a fixed time: every wait is a deadline on a condition.
"""

from __future__ import annotations

import time

import httpx
import pytest

from cli.stack import Stack
from mobility.store import Registry
from tests.integration.test_moves import Pair, wait_terminal

HELD = 12
HELD_PHASES = ("place", "wire", "sync")


def deploy(api: httpx.Client, name: str) -> None:
    r = api.post("/v1/services", json={"name": name, "workload": "echo", "cluster": "core"})
    assert r.status_code == 201, r.text


def held_in(registry: Registry, move_id: str) -> str | None:
    """The phase the move is held in (its ``fault_paused`` event), None before."""
    return next((e.phase for e in registry.events(move_id) if e.kind == "fault_paused"), None)


@pytest.mark.timeout(420)
def test_held_moves_do_not_hold_up_another_move(api: httpx.Client, lab_stack: Stack,
                                                registry: Registry) -> None:
    names = [f"hold-{i}" for i in range(HELD)]
    moves: dict[str, str] = {}
    pair: Pair | None = None
    try:
        for name in names:
            deploy(api, name)
        pair = Pair(api, lab_stack, "free")
        for i, name in enumerate(names):
            r = api.post("/v1/moves", json={
                "service": name, "to_cluster": "edge",
                "faults": [f"pause:{HELD_PHASES[i % len(HELD_PHASES)]}"]})
            assert r.status_code == 202, r.text
            moves[name] = str(r.json()["id"])
        deadline = time.monotonic() + 90
        waiting = dict(moves)
        while waiting:
            waiting = {n: m for n, m in waiting.items() if held_in(registry, m) is None}
            assert time.monotonic() < deadline, (
                f"{len(waiting)} of {HELD} moves never reached their phase while the others "
                f"were held (moves wait for each other's workers): {sorted(waiting)}")
            time.sleep(0.1)

        # every held move sits in its phase; a move of another service runs past them all
        r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge"})
        assert r.status_code == 202, r.text
        free = wait_terminal(api, str(r.json()["id"]), timeout=60)
        assert free["status"] == "succeeded", free
        for i, (name, move_id) in enumerate(moves.items()):
            move = registry.get_move(move_id)
            phase = HELD_PHASES[i % len(HELD_PHASES)]
            assert not move.status.terminal and str(move.phase) == phase, (name, move)
            assert phase not in move.phases_done, (name, move.phases_done)
        assert pair.service()["instance"]["cluster"] == "edge"
        pair.wait_replies(200)  # the client is answered from the target
    finally:
        for move_id in moves.values():
            registry.release_pause(move_id)
        ended = {name: wait_terminal(api, move_id, timeout=120)["status"]
                 for name, move_id in moves.items()}
        result = pair.finish() if pair is not None else None
        for name in names:
            api.delete(f"/v1/services/{name}")
    assert ended == dict.fromkeys(moves, "succeeded"), ended
    assert result is not None and result["lost"] == 0 and result["duplicated"] == 0, result


def test_a_moves_start_queues_behind_the_end_of_moves_under_way() -> None:
    """The start of a move (``move.run``) is routed at a lower priority than what finishes
    moves already under way (RELEASE, COMPLETE, a compensation); the reaper at the starts'
    own, so it never sees a start still queued ahead of it."""
    from mobility.models import Phase
    from workers.app import REAP_TASK, START_PRIORITY, app
    from workers.canvas import COMPENSATE, COMPLETE, RUN_PHASES, phase_task
    from workers.routing import ORCHESTRATION

    router = app.amqp.router
    for name in (RUN_PHASES, REAP_TASK):
        route = router.route({}, name)
        assert route["priority"] == START_PRIORITY > 0 and route["queue"].name == ORCHESTRATION
    for name in (phase_task(Phase.RELEASE), COMPLETE, COMPENSATE):
        assert router.route({}, name).get("priority") is None, name  # 0: served first
