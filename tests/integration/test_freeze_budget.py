"""The downtime budget on the lab: ``max_freeze_ms`` and ``deadline_s`` on POST /v1/moves.

Aspects: a stateful move with a generous budget succeeds, records its budget, the default
deadline, SYNC's prediction (``predicted_freeze_ms``, and a ``freeze_predicted`` event naming
its parts) beside the measured ``freeze_ms``, and the next move learns the freeze's fixed cost
from it; a budget no freeze can meet, with a short
deadline, waits with more rounds and then rolls the move back before anything froze (no
final delta, no freeze window, no CUTOVER step), the prediction and the budget in its error
and events, the source serving on, unfrozen, with all its state and every session's counter
continuing; an abort asked while the move waits for its budget is honoured, and the wait
keeps the lease (longer than its TTL, no takeover); a stateless move takes a budget (it never
freezes); the API's 422s for a budget that cannot apply, as sentences.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx

from cli.stack import Stack
from mobility.store import Registry
from tests.integration.test_moves import Pair, wait_terminal
from tests.integration.test_stateful import Sessions, assert_clean

log = logging.getLogger(__name__)


def events(api: httpx.Client, move_id: str) -> list[dict[str, Any]]:
    """Every event of a move that ended (the stream closes at its end)."""
    out = []
    with api.stream("GET", f"/v1/moves/{move_id}/events") as resp:
        kind = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind not in ("end", "error"):
                out.append(dict(json.loads(line[6:])))
    return out


def test_a_generous_budget_is_met_and_the_prediction_recorded(
        api: httpx.Client, lab_stack: Stack) -> None:
    s = Sessions(api, lab_stack, "fbok", state_mb=16, dirty_rate=5)
    for to in ("edge", "core"):  # there and back: the way back predicts from its own rounds
        r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": to,
                                        "max_freeze_ms": 30_000})
        assert r.status_code == 202, r.text
        assert r.json()["max_freeze_ms"] == 30_000 and r.json()["deadline_s"] == 30
        move = wait_terminal(api, r.json()["id"])
        assert move["status"] == "succeeded", move
        assert move["precopy_rounds"] >= 2, move
        assert move["predicted_freeze_ms"] is not None and move["predicted_freeze_ms"] > 0
        assert move["freeze_ms"] is not None and move["freeze_ms"] > 0, move
        log.info("predicted %s ms, measured %s ms", move["predicted_freeze_ms"],
                 move["freeze_ms"])
        evs = events(api, move["id"])
        predicted = [e for e in evs if e["kind"] == "freeze_predicted"]
        assert len(predicted) == 1, predicted
        assert "budget 30000 ms" in predicted[0]["detail"], predicted
        assert "dirty rate" in predicted[0]["detail"], predicted
        if to == "core":  # the first move's freeze is measured: its fixed cost is learnt
            assert "overhead learnt from" in predicted[0]["detail"], predicted
        assert not [e for e in evs if e["kind"] == "freeze_over_budget"]
        s.wait_answers(300)
    assert_clean(s.finish())


def test_an_impossible_budget_rolls_back_before_freezing(
        api: httpx.Client, lab_stack: Stack) -> None:
    s = Sessions(api, lab_stack, "fbno", state_mb=16, dirty_rate=40)
    source = s.instance()
    with s.agent(source["pod"]) as agent:
        keys_before = agent.call("status")["keys"]
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge",
                                    "max_freeze_ms": 1, "deadline_s": 1})
    assert r.status_code == 202, r.text
    move = wait_terminal(api, r.json()["id"], timeout=90)
    assert move["status"] == "rolled_back", move
    assert "max_freeze_ms 1" in (move["error"] or ""), move["error"]
    assert "predicted freeze" in (move["error"] or ""), move["error"]
    assert move["predicted_freeze_ms"] > 1, move
    assert move["freeze_ms"] is None and move["cutover_steps"] == [], move
    assert "cutover" not in move["phase_ms"], move
    kinds = [e["kind"] for e in events(api, move["id"])]
    assert "freeze_over_budget" in kinds and "freeze_predicted" in kinds, kinds
    assert "final_delta" not in kinds and "freeze_window" not in kinds, kinds
    assert not [e for e in events(api, move["id"])
                if e["kind"] == "phase_started" and e["phase"] == "cutover"]
    # the source serves as before: same instance, never frozen, every key still there
    assert s.instance() == source
    with s.agent(source["pod"]) as agent:
        status = agent.call("status")
        assert status["frozen"] is False and status["keys"] >= keys_before, status
    s.wait_answers(300)
    assert_clean(s.finish())


def test_an_abort_while_waiting_for_the_budget_is_honoured(
        api: httpx.Client, lab_stack: Stack) -> None:
    s = Sessions(api, lab_stack, "fbab", state_mb=4, dirty_rate=40)
    source = s.instance()
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge",
                                    "max_freeze_ms": 1, "deadline_s": 600})
    move_id = r.json()["id"]
    # wait past two lease TTLs (5 s each in the test stack) of waiting rounds
    deadline = time.monotonic() + 60
    while True:
        waiting = [e for e in _so_far(lab_stack, move_id)
                   if e["kind"] == "precopy_round" and "waiting" in e["detail"]]
        if len(waiting) >= 2 and waiting[-1]["ts"] - waiting[0]["ts"] > 10:
            break
        assert time.monotonic() < deadline, "the move does not wait for its budget"
        time.sleep(0.5)
    assert api.get(f"/v1/moves/{move_id}").json()["status"] == "running"
    assert api.post(f"/v1/moves/{move_id}/abort").status_code == 202
    move = wait_terminal(api, move_id, timeout=60)
    assert move["status"] == "rolled_back", move
    assert move["epoch"] == 0, move  # the wait kept the lease: nobody took the move over
    assert "aborted on request while waiting" in (move["error"] or ""), move["error"]
    assert s.instance() == source
    with s.agent(source["pod"]) as agent:
        assert agent.call("status")["frozen"] is False
    s.wait_answers(300)
    assert_clean(s.finish())


def test_a_stateless_move_takes_a_budget(api: httpx.Client, lab_stack: Stack) -> None:
    p = Pair(api, lab_stack, "fbsl")
    r = api.post("/v1/moves", json={"service": p.echo, "to_cluster": "edge",
                                    "max_freeze_ms": 5, "deadline_s": 0})
    assert r.status_code == 202, r.text
    move = wait_terminal(api, r.json()["id"])
    assert move["status"] == "succeeded", move
    assert move["max_freeze_ms"] == 5 and move["deadline_s"] == 0, move
    assert move["predicted_freeze_ms"] is None and move["freeze_ms"] is None, move
    p.wait_replies(200)
    assert p.finish()["lost"] == 0


def test_budgets_that_cannot_apply_are_422_sentences(api: httpx.Client,
                                                     lab_stack: Stack) -> None:
    p = Pair(api, lab_stack, "fbv")
    try:
        refused: list[tuple[dict[str, Any], str]] = [
            ({"deadline_s": 5}, "give max_freeze_ms too"),
            ({"max_freeze_ms": 50, "strategy": "stop-and-copy"}, "needs the precopy strategy"),
        ]
        for body, words in refused:
            r = api.post("/v1/moves", json={"service": p.echo, "to_cluster": "edge", **body})
            assert r.status_code == 422, r.text
            assert words in r.json()["detail"], r.text
        for body in ({"max_freeze_ms": 0}, {"max_freeze_ms": 60_001},
                     {"max_freeze_ms": 5, "deadline_s": 601}, {"max_freeze_ms": "soon"}):
            r = api.post("/v1/moves", json={"service": p.echo, "to_cluster": "edge", **body})
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"][1] in ("max_freeze_ms", "deadline_s"), r.text
        assert api.get(f"/v1/services/{p.echo}").json()["moving"] is None
    finally:
        p.finish()


def _so_far(stack: Stack, move_id: str) -> list[dict[str, Any]]:
    """The events of a move still running (read from the registry: the API's stream would
    wait for more)."""
    reg = Registry.from_url(stack.redis_url())
    try:
        return [e.to_dict() for e in reg.events(move_id)]
    finally:
        reg.r.close()
