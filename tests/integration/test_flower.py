"""Flower, started as its own process against the lab stack's broker, sees the workers' tasks.

Aspects: the workers send Celery task events (msgpack, like everything else: Flower is given
the project's app, so it accepts msgpack and nothing else), so a task sent by name shows in
Flower's HTTP API with its name, the worker that ran it and its final state, and the
orchestration worker shows among Flower's workers. Flower listens on 127.0.0.1 only, gets
the broker's credentials from an env file (never argv) and is ended by its PID.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from cli.stack import Stack
from mobility.store import acl
from tests.conftest import free_port
from workers.app import client
from workers.routing import ORCHESTRATION

TIMEOUT_S = 60


def wait_for(what: str, check: Any, log: Path) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what} within {TIMEOUT_S} s; Flower's log:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")


def test_flower_sees_a_task_the_workers_ran(lab_stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "flower.log"
    # the admin user: Flower reads the events' channel and asks the workers (remote control)
    env = lab_stack.env(acl.ADMIN, FLOWER_UNAUTHENTICATED_API="true")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app:app", "flower",
             "--address=127.0.0.1", f"--port={port}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(Path(__file__).parents[2]))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as flower:
            wait_for("Flower answers", lambda: flower.get("/healthcheck").status_code == 200,
                     log)
            # events flow once Flower has subscribed: beat's ticks show first (every 2 s)
            wait_for("Flower receives task events",
                     lambda: any(t.get("name") for t in flower.get(
                         "/api/tasks", params={"limit": 50}).json().values()), log)
            app = client(lab_stack.redis_url())
            result = app.send_task("moves.reap", queue=ORCHESTRATION, expires=60)
            assert isinstance(result.get(timeout=TIMEOUT_S), list)  # the moves it took over

            def seen() -> dict[str, Any] | None:
                task = flower.get(f"/api/task/info/{result.id}")
                if task.status_code != 200:
                    return None
                info: dict[str, Any] = task.json()
                return info if info.get("state") == "SUCCESS" else None

            info = wait_for(f"Flower shows task {result.id} succeeded", seen, log)
            assert info["name"] == "moves.reap"
            assert str(info["worker"]).startswith("orchestrator@"), info
            assert info.get("sent") or info.get("received"), info
            tasks = flower.get("/api/tasks", params={"limit": 1000}).json()
            assert result.id in tasks
            workers = wait_for("Flower lists the orchestrator",
                               lambda: [w for w in flower.get("/api/workers",
                                                              params={"refresh": "true"}
                                                              ).json()
                                        if w.startswith("orchestrator@")], log)
            assert workers
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
