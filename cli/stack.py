"""The local control plane around a lab: Redis, node agents, orchestrator, beat and API.

Each process is started once, recorded (PID and start time) under the lab's run directory and
reused while it runs, so ``ensure`` is cheap and idempotent; ``mobility lab down`` ends exactly
the recorded processes and those inside the lab's namespaces.

Redis binds 127.0.0.1 and the host end of the lab's host link, so node agents inside the lab
reach it; since that is not loopback, it has a password (never ``protected-mode no``).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from cli.client import ApiClient
from dataplane.lab import topology
from dataplane.lab.topology import LabPlan
from mobility import tokens
from mobility.models import Cluster, Node
from mobility.settings import DEFAULT_ENV_FILE, get_settings
from mobility.store import Registry
from mobility.tokens import Role
from workers.app import client

log = logging.getLogger(__name__)


# The Popen objects of the processes this process started: kept so they are neither reported
# as leaked while still running nor left as zombies once they end.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """A control-plane process could not be started; the message says what to do."""


def lab_clusters(plan: LabPlan) -> list[Cluster]:
    return [
        Cluster(name=c.name, underlay_mtu=c.mtu, labels=tuple(sorted(c.labels.items())),
                nodes=tuple(
            Node(name=n.name, cluster=n.cluster, underlay_ip=n.underlay_ip, namespace=n.namespace)
            for n in plan.nodes if n.cluster == c.name))
        for c in plan.clusters
    ]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def _wait(what: str, check: Callable[[], bool], timeout: float, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = log_path.read_text()[-2000:] if log_path and log_path.exists() else ""
    raise StackError(f"{what} did not come up within {timeout:g} s\n{tail}")


@dataclass
class Stack:
    plan: LabPlan
    redis_port: int = 6391
    api_port: int = 8470
    fault_injection: bool = False
    env_file: str | None = DEFAULT_ENV_FILE  # where `mobility` finds this stack; None: nowhere
    extra_env: dict[str, str] = field(default_factory=dict)  # more MOBILITY_* settings

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    @property
    def logs(self) -> Path:
        d = self.run_dir / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _password(self) -> str:
        path = self.run_dir / "redis" / "password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def redis_url(self, *, from_lab: bool = False) -> str:
        host = self.plan.host_ip if from_lab else "127.0.0.1"
        return f"redis://:{self._password()}@{host}:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def token_file(self) -> Path:
        return self.run_dir / "token"

    def token(self) -> str:
        """The stack's own admin token (for its CLI, demo, benches and tests)."""
        return self.token_file.read_text().strip()

    def api_client(self, *, timeout: float = 60.0, follow: bool = True) -> ApiClient:
        return ApiClient(self.api_url, token=self.token(), timeout=timeout, follow=follow)

    def _ensure_token(self, reg: Registry) -> None:
        """An admin token for the stack's own use, in a 0600 file; a new one when the file's
        token is no longer known (a fresh Redis)."""
        path = self.token_file
        if path.exists():
            parsed = tokens.parse(path.read_text().strip())
            known = reg.get_token(parsed[0]) if parsed else None
            if parsed and known is not None and known.matches(parsed[1]):
                return
        record, secret = tokens.mint(role=Role.ADMIN, name=f"{self.plan.name} stack")
        reg.put_token(record)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        os.replace(tmp, path)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
        env.update(
            MOBILITY_REDIS_URL=self.redis_url(),
            MOBILITY_LAB_NAME=self.plan.name,
            MOBILITY_API_PORT=str(self.api_port),
            MOBILITY_FAULT_INJECTION="1" if self.fault_injection else "0",
            MOBILITY_STATE_REDIS_URL=self.redis_url(from_lab=True),
            MOBILITY_ENV_FILE=os.devnull,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    def _spawn(self, role: str, argv: list[str], env: dict[str, str]) -> int:
        pid = topology.recorded_pid(self.run_dir, role)
        if pid is not None:
            return pid
        with open(self.logs / f"{role}.log", "ab") as out:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=str(self.run_dir))
        _CHILDREN[proc.pid] = proc
        topology.record_process(self.run_dir, role, proc.pid)
        log.info("started %s as pid %s", role, proc.pid)
        return proc.pid

    # --- the pieces ---

    def ensure_lab(self) -> None:
        topology.up(self.plan)

    def ensure_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed: run scripts/setup.sh "
                             "(or apt-get install redis-server)")
        if topology.recorded_pid(self.run_dir, "redis") is None and _port_open(
                "127.0.0.1", self.redis_port):
            raise StackError(f"port {self.redis_port} is taken by a process this lab did not "
                             "start; set MOBILITY_STACK_REDIS_PORT to another port")
        data = self.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", [
            binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", f"-{self.plan.host_ip}",
            "--requirepass", self._password(), "--dir", str(data), "--save", "",
            "--appendonly", "no", "--daemonize", "no",
        ], self.env())
        client = redis.Redis.from_url(self.redis_url(), socket_timeout=1)

        def pong() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        _wait("redis", pong, 15, self.logs / "redis.log")
        # Redis was perhaps started before the lab's host link existed: listen there too now.
        client.config_set("bind", f"127.0.0.1 -{self.plan.host_ip}")
        if self.env_file:
            path = Path(self.env_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(f"MOBILITY_REDIS_URL={self.redis_url()}\n"
                            f"MOBILITY_LAB_NAME={self.plan.name}\n"
                            f"MOBILITY_API_PORT={self.api_port}\n"
                            f"MOBILITY_TOKEN_FILE={self.token_file}\n")
        Registry(client).ping()
        reg = Registry(redis.Redis.from_url(self.redis_url()))
        for cluster in lab_clusters(self.plan):
            reg.put_cluster(cluster)
        self._ensure_token(reg)

    def ensure_agents(self) -> None:
        for n in self.plan.nodes:
            self._spawn(f"agent-{n.cluster}-{n.name}", [
                "nsenter", f"--net=/run/netns/{n.namespace}", sys.executable, "-m", "celery",
                "-A", "workers.app", "worker", "-Q", f"dataplane.{n.cluster}.{n.name}",
                "-P", "solo", "-n", f"agent-{n.cluster}-{n.name}@{self.plan.name}",
                "--without-gossip", "--without-mingle", "-l", "INFO",
            ], self.env(MOBILITY_REDIS_URL=self.redis_url(from_lab=True),
                        MOBILITY_NODE=f"{n.cluster}/{n.name}"))

    def ensure_orchestrator(self) -> None:
        self._spawn("orchestrator", [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "orchestration",
            "-P", "threads", "-c", "8", "-n", f"orchestrator@{self.plan.name}",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ], self.env())

    def ensure_beat(self) -> None:
        self._spawn("beat", [
            sys.executable, "-m", "celery", "-A", "workers.app", "beat",
            "-s", str(self.run_dir / "beat-schedule"), "-l", "INFO",
        ], self.env())

    def ensure_api(self) -> None:
        if topology.recorded_pid(self.run_dir, "api") is None and _port_open(
                "127.0.0.1", self.api_port):
            raise StackError(f"port {self.api_port} is taken by a process this lab did not "
                             "start; set MOBILITY_API_PORT to another port")
        self._spawn("api", [
            sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
            "--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning",
        ], self.env())

    def up(self, *, progress: Callable[[str], None] = lambda _: None) -> None:
        progress("lab namespaces")
        self.ensure_lab()
        progress("redis")
        self.ensure_redis()
        progress("node agents, orchestrator, beat, api")
        self.ensure_agents()
        self.ensure_orchestrator()
        self.ensure_beat()
        self.ensure_api()
        progress("waiting for every process to answer")
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        app = client(self.redis_url())

        def answers(task: str, queue: str) -> Callable[[], bool]:
            def check() -> bool:
                res = app.send_task(task, args=[{}] if task == "node.ping" else [], queue=queue,
                                    expires=5)
                try:
                    res.get(timeout=2)
                    return True
                except Exception:
                    return False
                finally:
                    res.forget()

            return check

        for n in self.plan.nodes:
            _wait(f"node agent {n.cluster}/{n.name}",
                  answers("node.ping", f"dataplane.{n.cluster}.{n.name}"), timeout,
                  self.logs / f"agent-{n.cluster}-{n.name}.log")
        _wait("orchestrator", answers("orchestrator.ping", "orchestration"), timeout,
              self.logs / "orchestrator.log")
        _wait("api", lambda: _port_open("127.0.0.1", self.api_port), timeout,
              self.logs / "api.log")

    def stop_process(self, role: str) -> None:
        pid = topology.recorded_pid(self.run_dir, role)
        if pid is not None:
            topology.terminate([pid])
        (self.run_dir / "pids" / f"{role}.json").unlink(missing_ok=True)
        reap_children()


def default_stack(config: str | None = None) -> Stack:
    """The stack `mobility` manages: the lab named by the settings (topology from ``config``,
    ``MOBILITY_LAB_CONFIG`` or the packaged default), Redis on MOBILITY_STACK_REDIS_PORT."""
    settings = get_settings()
    plan = topology.plan(topology.load_config(config or os.environ.get("MOBILITY_LAB_CONFIG"),
                                              name=settings.lab_name))
    return Stack(plan=plan, redis_port=int(os.environ.get("MOBILITY_STACK_REDIS_PORT", "6391")),
                 api_port=settings.api_port,
                 env_file=os.environ.get("MOBILITY_ENV_FILE", DEFAULT_ENV_FILE))


def reap_children() -> None:
    """Collect the exit status of every child that has ended."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]
