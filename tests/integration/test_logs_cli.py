"""The operator's commands on a real lab stack, run as the ``mobility`` program a person runs.

Aspects: after a real move, ``mobility logs --move <id> --json`` gives that move's lines only,
in time order, each carrying its id, from the orchestration worker and from a node agent (the
id crossed the queue in a task header); the human form tags each line ``[<id>]``;
``mobility logs --follow`` shows the lines of a move started while it follows;
``mobility moves --json`` lists the move with its phase times, ``moves --watch`` draws it and
ends cleanly on Ctrl-C; ``mobility status --json`` shows every process alive with its PID, both
clusters, where the service runs now, and no move left in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.stack import Stack

MOBILITY = str(Path(sys.executable).parent / "mobility")


def cli_env(stack: Stack) -> dict[str, str]:
    """What a person's shell has after ``mobility up``: the stack's env file (Redis URL, lab
    name, API port, token file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
    env.update(MOBILITY_ENV_FILE=str(stack.env_file), MOBILITY_LAB_NAME=stack.plan.name,
               MOBILITY_API_PORT=str(stack.api_port), PYTHONUNBUFFERED="1")
    if "MOBILITY_RUN_ROOT" in os.environ:
        env["MOBILITY_RUN_ROOT"] = os.environ["MOBILITY_RUN_ROOT"]
    return env


def mobility(stack: Stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([MOBILITY, *args], env=cli_env(stack), capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def move_and_wait(api: httpx.Client, service: str, to: str) -> dict[str, Any]:
    r = api.post("/v1/moves", json={"service": service, "to_cluster": to})
    assert r.status_code == 202, r.text
    move_id = r.json()["id"]
    deadline = time.monotonic() + 90
    while True:
        move: dict[str, Any] = api.get(f"/v1/moves/{move_id}").json()
        if move["status"] in ("succeeded", "failed", "rolled_back"):
            return move
        assert time.monotonic() < deadline, f"move stuck: {move}"
        time.sleep(0.1)


def eventually(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


@pytest.fixture
def echo(api: httpx.Client) -> Any:
    name = "logs-echo"
    r = api.post("/v1/services", json={"name": name, "workload": "echo", "cluster": "core"})
    assert r.status_code == 201, r.text
    yield name
    assert api.delete(f"/v1/services/{name}").status_code == 204


def move_lines(stack: Stack, move_id: str) -> list[dict[str, Any]]:
    proc = mobility(stack, "logs", "--move", move_id, "--json")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_moves_lines_carry_its_id_from_the_worker_and_the_agents(
        api: httpx.Client, lab_stack: Stack, echo: str, tmp_path: Path) -> None:
    move = move_and_wait(api, echo, "edge")
    assert move["status"] == "succeeded", move
    move_id = move["id"]

    def from_both() -> bool:
        tagged = {r["component"] for r in move_lines(lab_stack, move_id)
                  if r.get("move_id") == move_id}
        return "orchestrator" in tagged and any(c.startswith("agent-") for c in tagged)

    assert eventually(from_both), move_lines(lab_stack, move_id)
    rows = move_lines(lab_stack, move_id)
    assert all(r.get("move_id") == move_id or move_id in r["msg"] for r in rows)
    assert not any(r.get("raw") for r in rows)  # plain lines cannot be a move's
    times = [r["ts"] for r in rows]
    assert times == sorted(times)
    agents = [r for r in rows if r["component"].startswith("agent-")]
    assert any(r["logger"] == "workers.node" and " done for pod " in r["msg"] for r in agents)
    phases = {r["msg"].split("[")[0].split()[-1] for r in rows
              if r["component"] == "orchestrator" and r["msg"].startswith("Task move.")}
    assert {"move.run", "move.release", "move.complete"} <= phases, phases
    # another move's lines are not this one's
    other = {r.get("move_id") for r in rows} - {move_id, None}
    assert other == set()

    human_text = mobility(lab_stack, "logs", "--move", move_id).stdout
    (tmp_path / "logs-move.txt").write_text(human_text)  # what a person sees, kept
    human = human_text.splitlines()
    assert len(human) == len(rows)
    assert all(move_id in line for line in human)
    assert sum(f"[{move_id}]" in line for line in human) >= len(
        [r for r in rows if r.get("move_id") == move_id])

    # moves: the move, its phases' times
    listed = json.loads(mobility(lab_stack, "moves", "--json", "--limit", "10").stdout)
    mine = next(m for m in listed if m["id"] == move_id)
    assert mine["status"] == "succeeded" and mine["total_ms"] > 0
    assert (mine["from_cluster"], mine["to_cluster"]) == ("core", "edge")
    table = mobility(lab_stack, "moves", "--limit", "10").stdout
    (tmp_path / "moves.txt").write_text(table)
    assert move_id in table and "core→edge" in table

    # status: every process alive, the clusters, where the service runs, nothing in flight
    status = json.loads(mobility(lab_stack, "status", "--json").stdout)
    procs = {p["role"]: p for p in status["processes"]}
    for role in ("redis", "orchestrator", "beat", "api", "supervisor"):
        assert procs[role]["alive"] is True and isinstance(procs[role]["pid"], int), procs
    assert any(r.startswith("agent-") and p["alive"] for r, p in procs.items())
    assert {c["name"] for c in status["clusters"]} == {"core", "edge"}
    svc = next(s for s in status["services"] if s["name"] == echo)
    assert svc["cluster"] == "edge" and svc["pod"] == move["target"]["pod"]
    assert move_id not in {m["id"] for m in status["moves_in_flight"]}
    assert "error" not in status
    human_status = mobility(lab_stack, "status").stdout
    (tmp_path / "status.txt").write_text(human_status)
    assert echo in human_status and "orchestrator" in human_status


def test_follow_shows_a_move_started_while_following(
        api: httpx.Client, lab_stack: Stack, echo: str, tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr, subprocess.Popen(
            [MOBILITY, "logs", "--follow", "--json", "--component", "orchestrator",
             "--component", "agent", "--lines", "1"],
            env=cli_env(lab_stack), stdout=subprocess.PIPE, stderr=stderr, text=True) as proc:

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                got.append(json.loads(line))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert eventually(lambda: len(got) >= 1), errors.read_text()
            move = move_and_wait(api, echo, "edge")
            assert move["status"] == "succeeded", move

            def seen() -> set[str]:
                return {str(r["component"]) for r in list(got)
                        if r.get("move_id") == move["id"]}

            assert eventually(lambda: "orchestrator" in seen()
                              and any(c.startswith("agent-") for c in seen())), seen()
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(10)
            reader.join(5)
    assert {str(r["component"]).split("-")[0] for r in got} <= {"orchestrator", "agent"}


def test_moves_watch_draws_and_stops_on_ctrl_c(api: httpx.Client, lab_stack: Stack,
                                               echo: str, tmp_path: Path) -> None:
    move = move_and_wait(api, echo, "edge")
    out_path = tmp_path / "watch.out"
    with out_path.open("w") as out, subprocess.Popen(
            [MOBILITY, "moves", "--watch", "--limit", "5"], env=cli_env(lab_stack),
            stdout=out, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            time.sleep(3)  # a few refreshes
            assert proc.poll() is None, out_path.read_text()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0, out_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    text = out_path.read_text()
    assert move["id"] in text and "Traceback" not in text, text
