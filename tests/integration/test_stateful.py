"""Stateful moves on the lab: the session service's state over Redis, pre-copy, freeze window.

Aspects: a move carries the state intact (digest equal on both sides) and every session's
counter continues (no reset, gap or double increment) with no request lost; stop-and-copy
works too; the target's agent killed in the middle of the transfer rolls the move back with
the source serving; a corrupted frame rolls the move back, never a silently corrupted target;
no key of the move's transfer is left once its expiry has passed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
import redis

from cli.stack import Stack
from mobility import keys
from state_transfer.control import AgentClient
from tests.conftest import STATE_TTL_S
from tests.integration.test_moves import release_pause, wait_event, wait_terminal


class Sessions:
    """A session service with extra state, and a session client at 1,000 req/s."""

    def __init__(self, api: httpx.Client, stack: Stack, tag: str, *, state_mb: float,
                 dirty_rate: float = 1.0) -> None:
        self.api, self.stack = api, stack
        self.svc, self.client = f"sess-{tag}", f"sclient-{tag}"
        r = api.post("/v1/services", json={"name": self.svc, "workload": "sessions",
                                           "cluster": "core",
                                           "params": {"state_mb": state_mb,
                                                      "dirty_rate": dirty_rate}})
        assert r.status_code == 201, r.text
        r = api.post("/v1/services", json={"name": self.client, "workload": "session-probe",
                                           "cluster": "core", "peers": [self.svc]})
        assert r.status_code == 201, r.text
        self.pod_dir = stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io"
        self.wait_answers(300)

    def progress(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.pod_dir / "progress.json").read_text()))
        except (FileNotFoundError, ValueError):
            return {"answered": 0}

    def wait_answers(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        start = int(self.progress().get("answered", 0))
        while int(self.progress().get("answered", 0)) < start + n:
            assert time.monotonic() < deadline, "the session client gets no answers"
            time.sleep(0.05)

    def instance(self) -> dict[str, Any]:
        return dict(self.api.get(f"/v1/services/{self.svc}").json()["instance"])

    def agent(self, pod: str) -> AgentClient:
        return AgentClient(str(self.stack.run_dir / "pods" / pod / "state.sock"))

    def finish(self) -> dict[str, Any]:
        assert self.api.delete(f"/v1/services/{self.client}").status_code == 204
        result = dict(json.loads((self.pod_dir / "probe.json").read_text()))
        assert self.api.delete(f"/v1/services/{self.svc}").status_code == 204
        return result


def assert_clean(result: dict[str, Any]) -> None:
    assert result["lost"] == 0, result
    assert result["counters_ok"] is True, result
    assert result["answered"] == result["sent"] > 200, result  # it sent, all answered


def test_state_arrives_intact_and_counters_continue(api: httpx.Client, lab_stack: Stack) -> None:
    s = Sessions(api, lab_stack, "ok", state_mb=32, dirty_rate=5)
    source = s.instance()
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge"})
    assert r.status_code == 202, r.text
    move = wait_terminal(api, r.json()["id"])
    assert move["status"] == "succeeded", move
    assert move["strategy"] == "precopy" and move["stateful"] is True
    assert move["precopy_rounds"] >= 2 and move["state_bytes"] > 32 * 2**20
    assert move["freeze_ms"] is not None and move["freeze_ms"] > 0
    assert s.instance()["cluster"] == "edge"
    assert source["pod"] != s.instance()["pod"]
    with s.agent(s.instance()["pod"]) as agent:
        status = agent.call("status")
        assert status["frozen"] is False and status["keys"] >= 512
    s.wait_answers(300)
    # and straight back to the node it came from: its old link ends must be gone by now
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "core"})
    move = wait_terminal(api, r.json()["id"])
    assert move["status"] == "succeeded", move
    assert s.instance()["node"] == source["node"]
    s.wait_answers(300)
    assert_clean(s.finish())


@pytest.mark.parametrize("strategy", ["precopy", "stop-and-copy"])
def test_digest_equal_on_both_sides(api: httpx.Client, lab_stack: Stack, strategy: str) -> None:
    s = Sessions(api, lab_stack, strategy[:4], state_mb=16, dirty_rate=0)
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge",
                                    "strategy": strategy, "faults": ["pause:cutover"]})
    assert r.status_code == 202, r.text
    move_id = r.json()["id"]
    wait_event(api, move_id, "fault_paused", "cutover")
    move = api.get(f"/v1/moves/{move_id}").json()
    assert move["cutover_confirmed"] is True, move
    # in the pause after the cutover both instances exist: the frozen source and the target
    # (the extra state, "blob:*": the sessions go on changing on the target once it serves)
    with s.agent(move["source"]["pod"]) as src, s.agent(move["target"]["pod"]) as tgt:
        assert src.call("status")["frozen"] is True
        assert tgt.call("status")["frozen"] is False
        digest = src.call("digest", prefix="blob:")["digest"]
        assert digest == tgt.call("digest", prefix="blob:")["digest"]
        assert digest != tgt.call("digest", prefix="nothing")["digest"]
    release_pause(lab_stack, move_id)
    move = wait_terminal(api, move_id)
    assert move["status"] == "succeeded", move
    assert (move["precopy_rounds"] == 1) == (strategy == "stop-and-copy"), move
    assert_clean(s.finish())


def test_target_killed_mid_transfer_rolls_back_with_source_serving(
        api: httpx.Client, lab_stack: Stack) -> None:
    s = Sessions(api, lab_stack, "kill", state_mb=192, dirty_rate=0)
    source = s.instance()
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge"})
    move_id = r.json()["id"]
    wait_event(api, move_id, "phase_started", "sync")
    target = api.get(f"/v1/moves/{move_id}").json()["target"]
    meta = json.loads((lab_stack.run_dir / "pods" / target["pod"] / "meta.json").read_text())
    os.kill(int(meta["pid"]), signal.SIGKILL)
    move = wait_terminal(api, move_id, timeout=90)
    assert move["status"] == "rolled_back", move
    assert "sync" in (move["error"] or "")
    assert s.instance() == source
    with s.agent(source["pod"]) as agent:
        assert agent.call("status")["frozen"] is False
    s.wait_answers(500)
    assert_clean(s.finish())


@pytest.mark.parametrize("fault", ["corrupt:sync", "corrupt:cutover"])
def test_corrupted_frame_rolls_back(api: httpx.Client, lab_stack: Stack, fault: str) -> None:
    s = Sessions(api, lab_stack, f"c{fault[8]}", state_mb=8)
    source = s.instance()
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge", "faults": [fault]})
    assert r.status_code == 202, r.text
    move = wait_terminal(api, r.json()["id"])
    assert move["status"] == "rolled_back", move
    assert "authentication failed" in (move["error"] or ""), move["error"]
    assert s.instance() == source
    with s.agent(source["pod"]) as agent:
        assert agent.call("status")["frozen"] is False, "the source must be unfrozen"
    s.wait_answers(300)
    assert_clean(s.finish())


def test_no_key_of_the_move_outlives_its_expiry(api: httpx.Client, lab_stack: Stack) -> None:
    s = Sessions(api, lab_stack, "ttl", state_mb=4)
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge"})
    move = wait_terminal(api, r.json()["id"])
    assert move["status"] == "succeeded"
    client = redis.Redis.from_url(lab_stack.redis_url())
    # right after the move the acknowledgement counter exists, with a TTL at most STATE_TTL_S
    ttls = [client.ttl(k) for k in keys.state_keys(move["id"]) if client.exists(k)]
    assert ttls and all(0 < t <= STATE_TTL_S for t in ttls), ttls
    time.sleep(STATE_TTL_S + 1)
    left = list(client.scan_iter(match=f"{keys.PREFIX}state:{move['id']}*"))
    assert left == [], left
    assert_clean(s.finish())


def test_moving_the_session_client_loses_nothing(api: httpx.Client, lab_stack: Stack) -> None:
    s = Sessions(api, lab_stack, "cli", state_mb=2)
    old_dir = s.pod_dir
    r = api.post("/v1/moves", json={"service": s.client, "to_cluster": "edge"})
    assert r.status_code == 202, r.text
    move = wait_terminal(api, r.json()["id"])
    assert move["status"] == "succeeded", move
    s.pod_dir = lab_stack.run_dir / "pods" / move["target"]["pod"] / "io"
    s.wait_answers(300)  # the new instance sends, and gets answers
    old = json.loads((old_dir / "probe.json").read_text())  # written as it was released
    assert_clean(s.finish())
    assert old["lost"] == 0 and old["counters_ok"] is True, old


def test_cutover_run_twice_never_reships_the_delta(api: httpx.Client, lab_stack: Stack) -> None:
    """C1: CUTOVER retried after its work was done (a retryable error at its end): the second
    run skips the delta it shipped; the target's newer writes survive (counters continue)."""
    s = Sessions(api, lab_stack, "twice", state_mb=8, dirty_rate=5)
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge",
                                    "faults": ["flaky:cutover"]})
    move_id = r.json()["id"]
    move = wait_terminal(api, move_id)
    assert move["status"] == "succeeded", move
    assert move["epoch"] == 0, move  # retried in place
    assert move["cutover_steps"] == ["delta_shipped", "target_resumed", "switched"], move
    finals = [line for line in _events(api, move_id) if line == "final_delta"]
    assert len(finals) == 1, "the final delta was shipped twice"
    s.wait_answers(300)
    assert_clean(s.finish())


def test_killed_after_the_switch_a_stateful_move_goes_forward(
        api: httpx.Client, lab_stack: Stack) -> None:
    """C2: once the peers were switched the target may have taken writes: a worker killed
    then does not roll back (that would lose them); the move finishes forward."""
    from tests.integration.test_faults import kill_orchestrator

    s = Sessions(api, lab_stack, "fwd", state_mb=8, dirty_rate=5)
    source = s.instance()
    r = api.post("/v1/moves", json={"service": s.svc, "to_cluster": "edge",
                                    "faults": ["pause:switched"]})
    move_id = r.json()["id"]
    wait_event(api, move_id, "fault_paused", "cutover")
    assert api.get(f"/v1/moves/{move_id}").json()["forward_only"] is True
    s.wait_answers(200)  # the target serves (and takes writes) now
    assert api.post(f"/v1/moves/{move_id}/abort").status_code == 409  # too late to undo
    kill_orchestrator(lab_stack)
    move = wait_terminal(api, move_id, timeout=120)
    assert move["status"] == "succeeded", move
    assert move["epoch"] >= 1
    assert s.instance()["cluster"] == "edge" and s.instance()["pod"] != source["pod"]
    s.wait_answers(300)
    assert_clean(s.finish())


def _events(api: httpx.Client, move_id: str) -> list[str]:
    kinds = []
    with api.stream("GET", f"/v1/moves/{move_id}/events") as resp:
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
    return kinds
