"""Redis users and credentials for a real site (docker-compose.yml), one user per component.

``python -m cli.redis_secrets DIR --node core/n1 [--node edge/n1 ...]`` writes:

- ``DIR/redis/redis.conf`` and ``DIR/redis/users.acl``: what Redis reads (the append-only file
  on, ``everysec``; the users of :mod:`mobility.store.acl` with SHA-256 digests of their
  passwords only, a ``default`` user nobody can log in as). No password is in them, so they
  are 0644: the Redis image reads them as its own user.
- ``DIR/<user>.env`` (0600): one component's ``MOBILITY_REDIS_URL`` (the orchestrator's also
  the state agents' URL, and the API's and the orchestrator's the credentials key they share),
  handed to that component alone as a compose secret and named by ``MOBILITY_ENV_FILE``, so no
  password is in a command line or a container's environment.
- ``DIR/passwords/<user>`` (0600): kept, so running this again changes nothing but what changed
  (a node added, say).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from mobility.store import acl
from workers.routing import ORCHESTRATION, node_queue


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _kept(path: Path, make: str) -> str:
    if not path.exists():
        _write(path, make + "\n", 0o600)
    return path.read_text().strip()


def users_for(nodes: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    return acl.component_users(
        orchestration=ORCHESTRATION, node_queues=node_queue("*", "*"),
        orchestrator_worker="orchestrator@*",
        agents={acl.agent_user(c, n): acl.CeleryRole(
            consumes=(node_queue(c, n),), worker=f"agent-{c}-{n}@*") for c, n in nodes})


def write(out: Path, nodes: Sequence[tuple[str, str]], *, host: str = "redis",
          agent_host: str = "127.0.0.1", state_host: str | None = None,
          port: int = 6379, agent_port: int | None = None) -> dict[str, Path]:
    """Write every file (see the module's doc); the env file of each user. ``agent_port``:
    the port Redis is published on where the agents, the state agents and a person's
    commands reach it (``agent_host``, ``state_host``), when not ``port``."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    (out / "passwords").mkdir(mode=0o700, exist_ok=True)
    (out / "redis").mkdir(mode=0o755, exist_ok=True)
    users = users_for(nodes)
    passwords = {u: _kept(out / "passwords" / u, secrets.token_urlsafe(24)) for u in users}
    cred_key = _kept(out / "passwords" / "credentials.key",
                     base64.b64encode(secrets.token_bytes(32)).decode())
    locked = _kept(out / "passwords" / "default.digest", acl.locked_digest())
    _write(out / "redis" / "users.acl", acl.acl_file(users, passwords, default_digest=locked),
           0o644)
    _write(out / "redis" / "redis.conf", "\n".join([
        "# Written by python -m cli.redis_secrets: no password here (users.acl holds digests)",
        f"port {port}",
        "bind * -::*",
        "protected-mode yes",
        "dir /data",
        "aclfile /usr/local/etc/redis/users.acl",
        'save ""',
        "appendonly yes",
        "appendfsync everysec",
        "",
    ]), 0o644)

    def url(user: str, where: str, at: int = port) -> str:
        return acl.with_credentials(f"redis://{where}:{at}/0", user, passwords[user])

    outside = agent_port or port

    envs = {}
    for user in users:
        if user in (acl.ADMIN, acl.STATE):
            continue
        agent = user.startswith(acl.AGENT_PREFIX)
        mine = url(user, agent_host, outside) if agent else url(user, host)
        lines = [f"MOBILITY_REDIS_URL={mine}"]
        if user == acl.ORCHESTRATOR:
            state = (url(acl.STATE, state_host, outside) if state_host
                     else url(acl.STATE, host))
            lines.append(f"MOBILITY_STATE_REDIS_URL={state}")
        if user in (acl.API, acl.ORCHESTRATOR):
            lines.append(f"MOBILITY_CREDENTIALS_KEY={cred_key}")
        envs[user] = out / f"{user}.env"
        _write(envs[user], "\n".join(lines) + "\n", 0o600)
    envs[acl.ADMIN] = out / f"{acl.ADMIN}.env"  # for a person's `mobility` commands
    _write(envs[acl.ADMIN], f"MOBILITY_REDIS_URL={url(acl.ADMIN, agent_host, outside)}\n",
           0o600)
    return envs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.redis_secrets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--node", action="append", default=[], metavar="CLUSTER/NODE",
                        help="a node with a dataplane agent (repeat for each)")
    parser.add_argument("--host", default="redis", help="Redis as the containers reach it")
    parser.add_argument("--agent-host", default="127.0.0.1",
                        help="Redis as the agents (host network) reach it")
    parser.add_argument("--agent-port", type=int, default=None,
                        help="the port Redis is published on for them (default: 6379)")
    parser.add_argument("--state-host", default=None,
                        help="Redis as the applications' state agents reach it")
    args = parser.parse_args(argv)
    nodes = []
    for spec in args.node:
        cluster, _, node = spec.partition("/")
        if not cluster or not node:
            parser.error(f"--node {spec!r}: use CLUSTER/NODE")
        nodes.append((cluster, node))
    envs = write(args.out, nodes, host=args.host, agent_host=args.agent_host,
                 state_host=args.state_host, agent_port=args.agent_port)
    for user, path in sorted(envs.items()):
        print(f"{user}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
