"""docker-compose.yml: the deployment shape names only entry points that exist.

Aspects: the five roles are there (redis, api, orchestrator, beat, dataplane agent); every
command's executable is a console script of the installed environment; every Celery app and
ASGI factory it names imports and has the attribute; the orchestrator and every dataplane agent
run a Celery worker, each with -Q naming the queue the code routes to (the orchestration queue,
the agent's own node queue); the dataplane agent is privileged on the host network.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import yaml

from tests.conftest import REPO
from workers.routing import ORCHESTRATION, node_queue

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, object]]:
    return dict(COMPOSE["services"])


def resolve(ref: str) -> object:
    module, _, attr = ref.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr or "app")


def test_every_role_is_present() -> None:
    names = set(services())
    assert {"redis", "api", "orchestrator", "beat"} <= names
    agents = [n for n in names if n.startswith("dataplane-")]
    assert agents, "at least one dataplane agent"
    for n in agents:
        svc = services()[n]
        assert svc["privileged"] is True and svc["network_mode"] == "host"


def test_commands_name_existing_entry_points() -> None:
    venv_bin = Path(__import__("sys").executable).parent
    for name, svc in services().items():
        if name == "redis":
            continue
        command = svc["command"]
        assert isinstance(command, list)
        exe = str(command[0])
        assert (venv_bin / exe).exists() or shutil.which(exe), f"{name}: no executable {exe}"
        if exe == "celery":
            app_ref = command[command.index("-A") + 1]
            assert resolve(str(app_ref)).__class__.__name__ == "MobilityCelery"
        elif exe == "uvicorn":
            assert "--factory" in command
            app_ref = next(str(c) for c in command if ":" in str(c))
            assert callable(resolve(app_ref)), f"{name}: {app_ref} is not a factory"


def command_of(svc: dict[str, object]) -> list[str]:
    command = svc.get("command")
    return [str(c) for c in command] if isinstance(command, list) else []


def test_worker_queues_are_routed() -> None:
    workers = {name: command for name, svc in services().items()
               if (command := command_of(svc))[:2] == ["celery", "-A"] and "worker" in command}
    # the orchestrator and every dataplane agent run a worker; nothing else does
    agents = {n for n in services() if n.startswith("dataplane-")}
    assert agents and set(workers) == {"orchestrator", *agents}
    for name, command in workers.items():
        # without -Q a worker consumes Celery's default queue, which nothing routes to
        assert "-Q" in command, f"{name}: a worker without -Q"
        queue = command[command.index("-Q") + 1]
        if name == "orchestrator":
            assert queue == ORCHESTRATION
        else:
            cluster, node = str(services()[name]["environment"]["MOBILITY_NODE"]).split("/")  # type: ignore[index]
            assert queue == node_queue(cluster, node), f"{name}: consumes {queue}"
