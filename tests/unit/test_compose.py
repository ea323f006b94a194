"""docker-compose.yml: the deployment shape names only entry points that exist.

Aspects: the five roles are there (redis, api, orchestrator, beat, dataplane agent); every
command's executable is a console script of the installed environment; every Celery app and
ASGI factory it names imports and has the attribute; the orchestrator and every dataplane agent
run a Celery worker, each with -Q naming the queue the code routes to (the orchestration queue,
the agent's own node queue); the dataplane agent has every capability but CAP_SYS_RESOURCE, the
host network and PID namespace, and enters its own node's network namespace; no image names a
registry (both are built locally, tagged by the site tool); Redis reads its configuration from
a mounted file (no password on its command line); every component gets its own Redis user's
URL as a compose secret named by MOBILITY_ENV_FILE, never in its environment; the secrets
generator writes every file compose names (env files 0600, the ACL with digests only, the
append-only file on; agents and state agents at the published address and port) and keeps the
passwords when run again.
"""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import yaml

from cli import redis_secrets
from mobility.store import acl
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
        assert svc["network_mode"] == "host" and svc["pid"] == "host"
        assert svc["cap_add"] == ["ALL"] and svc["cap_drop"] == ["SYS_RESOURCE"]
        cluster, node = str(svc["environment"]["MOBILITY_NODE"]).split("/")  # type: ignore[index]
        assert svc["entrypoint"] == [
            "nsenter", f"--net=/run/netns/${{MOBILITY_LAB_NAME:-smlab}}-{cluster}-{node}"]
        assert "/run/netns:/run/netns:rshared" in svc["volumes"]  # type: ignore[operator]


def test_images_are_local() -> None:
    for name, svc in services().items():
        image = str(svc["image"])
        assert image.split(":")[0] in ("service-mobility", "service-mobility-redis"), name
        assert "${MOBILITY_" in image, f"{name}: its tag is the site tool's"


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


# --- Redis credentials (step 7): config from a file, one user per component, secrets ---


def test_redis_reads_its_config_from_a_file_never_argv() -> None:
    redis_svc = services()["redis"]
    command = command_of(redis_svc)
    assert command[0] == "redis-server" and len(command) == 2, command
    conf_dir = str(Path(command[1]).parent)
    mounts = [str(v).rsplit(":", 2) for v in redis_svc["volumes"]]  # type: ignore[attr-defined]
    assert ["${MOBILITY_SECRETS:-./secrets}/redis", conf_dir, "ro"] in mounts
    assert "requirepass" not in str(redis_svc) and "PASSWORD" not in str(redis_svc)


def component_user(name: str, svc: dict[str, object]) -> str:
    if name.startswith("dataplane-"):
        cluster, node = str(svc["environment"]["MOBILITY_NODE"]).split("/")  # type: ignore[index]
        return acl.agent_user(cluster, node)
    return {"api": acl.API, "orchestrator": acl.ORCHESTRATOR, "beat": acl.BEAT}[name]


def test_each_component_gets_its_own_user_as_a_secret_not_in_its_environment() -> None:
    declared = COMPOSE["secrets"]
    for name, svc in services().items():
        if name == "redis":
            continue
        env = dict(svc["environment"])  # type: ignore[call-overload]
        assert not any("REDIS_URL" in k or "PASSWORD" in k for k in env), (name, env)
        user = component_user(name, svc)
        assert svc["secrets"] == [f"{user}.env"], name
        assert env["MOBILITY_ENV_FILE"] == f"/run/secrets/{user}.env"
        assert declared[f"{user}.env"] == {"file": f"${{MOBILITY_SECRETS:-./secrets}}/{user}.env"}
        command = command_of(svc)
        if "worker" in command:  # its -n is what its user's remote-control queue allows
            worker = command[command.index("-n") + 1]
            expected = ("orchestrator" if user == acl.ORCHESTRATOR
                        else user.replace(acl.AGENT_PREFIX, "agent-"))
            assert worker == f"{expected}@%h", (name, worker)


def test_the_secrets_generator_writes_what_compose_reads(tmp_path: Path) -> None:
    nodes = [tuple(str(s["environment"]["MOBILITY_NODE"]).split("/"))  # type: ignore[index]
             for n, s in services().items() if n.startswith("dataplane-")]
    envs = redis_secrets.write(tmp_path, nodes, agent_host="198.18.255.253",  # type: ignore[arg-type]
                               state_host="198.18.255.253", agent_port=6400)
    passwords = {p.name: p.read_text().strip() for p in (tmp_path / "passwords").iterdir()
                 if p.name != "default.digest"}  # a digest, and in users.acl by design
    for spec in COMPOSE["secrets"].values():
        path = tmp_path / Path(spec["file"]).relative_to("${MOBILITY_SECRETS:-./secrets}")
        assert path.exists() and path.stat().st_mode & 0o777 == 0o600, path
    conf = (tmp_path / "redis" / "redis.conf").read_text().splitlines()
    command = command_of(services()["redis"])
    assert "appendonly yes" in conf and "appendfsync everysec" in conf
    assert f"aclfile {Path(command[1]).parent}/users.acl" in conf
    acl_text = (tmp_path / "redis" / "users.acl").read_text()
    assert re.match(r"user default on #[0-9a-f]{64} ", acl_text)
    for text in (acl_text, "\n".join(conf)):
        assert not any(pw in text for pw in passwords.values())
    agent = acl.agent_user(*nodes[0])
    assert f"redis://{agent}:" in envs[agent].read_text()
    assert "@198.18.255.253:6400/0" in envs[agent].read_text()  # published, for the nodes
    assert "mob-state:" in envs[acl.ORCHESTRATOR].read_text()
    assert "@198.18.255.253:6400/0" in envs[acl.ORCHESTRATOR].read_text()
    assert "@redis:6379/0" in envs[acl.API].read_text()
    assert "MOBILITY_STATE_REDIS_URL=redis://mob-state:" in envs[acl.ORCHESTRATOR].read_text()
    again = redis_secrets.write(tmp_path, nodes, agent_host="198.18.255.253",  # type: ignore[arg-type]
                                state_host="198.18.255.253", agent_port=6400)
    assert again[acl.API].read_text() == envs[acl.API].read_text()  # passwords kept
