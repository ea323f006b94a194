"""The local control plane around a lab: Redis, node agents, orchestrator, beat and API.

Each process is started once, recorded (PID and start time) under the lab's run directory and
reused while it runs, so ``ensure`` is cheap and idempotent; ``mobility lab down`` ends exactly
the recorded processes and those inside the lab's namespaces.

Redis binds 127.0.0.1 and the host end of the lab's host link, so node agents inside the lab
reach it; since that is not loopback, every client must authenticate (never ``protected-mode
no``). Redis reads its configuration from ``<run dir>/redis/redis.conf`` and its users from
``users.acl`` beside it (both 0600; the ACL holds SHA-256 digests only), never from its command
line: one ACL user per component (:mod:`mobility.store.acl`), a ``default`` user nobody can log
in as, and the append-only file on (``appendfsync everysec``), so a restart keeps the registry,
locks, moves and queued tasks.

In Sentinel mode (``Stack(sentinel=True)``) a replica and three sentinels run beside it, on the
same host link, under the run directory and recorded like every other process: the replica
reads the same ACL file (ACLs are not replicated) and replicates as the admin user; the
sentinels (``redis-server <conf> --sentinel``) watch the master as the admin user, require a
password of their own, and decide on a failover with a quorum of two. Every component then
finds the sentinels in its env file and reaches the master through them
(:mod:`mobility.store.connecting`), so a failover moves them all to the new master. The state
channel keeps its direct URL (the first master's address).

Each user's password is in a 0600 file under ``redis/passwords/``; a component finds its
Redis URL in its own 0600 env file (``redis/<user>.env``, named by
``MOBILITY_ENV_FILE``), so no password is in any process's command line or environment.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from cli import supervise
from cli.client import ApiClient
from dataplane import containers
from dataplane.errors import DataplaneError
from dataplane.lab import images as lab_images
from dataplane.lab import topology
from dataplane.lab.topology import LabPlan
from mobility import tokens
from mobility.models import Cluster, Node
from mobility.settings import DEFAULT_ENV_FILE, get_settings
from mobility.store import Registry, acl
from mobility.store.connecting import SentinelConfig, connect
from mobility.tokens import Role
from workers.app import client
from workers.routing import ORCHESTRATION, node_queue

log = logging.getLogger(__name__)


# The Popen objects of the processes this process started: kept so they are neither reported
# as leaked while still running nor left as zombies once they end.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


BEAT_MAX_INTERVAL_S = 5
SENTINELS = 3
SENTINEL_QUORUM = 2
# how long the sentinels wait before they call the master down, and before a failover that
# did not finish is tried again: short, for a lab on one host
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10000
SENTINEL_SECRET = "sentinels"  # the sentinels' requirepass, a file beside the users' passwords


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
    # Redis Sentinel: a replica on replica_port and sentinels on sentinel_ports (defaults:
    # the ports after redis_port)
    sentinel: bool = False
    replica_port: int = 0
    sentinel_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.sentinel:
            self.replica_port = self.replica_port or self.redis_port + 1
            self.sentinel_ports = self.sentinel_ports or tuple(
                self.redis_port + 2 + i for i in range(SENTINELS))

    @property
    def sentinel_master(self) -> str:
        """The name the sentinels know the master by: the lab's."""
        return self.plan.name

    def sentinel_config(self) -> SentinelConfig | None:
        """Where the sentinels are (on the host link, so the lab reaches them too); None
        without Sentinel."""
        if not self.sentinel:
            return None
        return SentinelConfig(sentinels=tuple((self.plan.host_ip, p) for p in self.sentinel_ports),
                              master=self.sentinel_master,
                              password=self._password(SENTINEL_SECRET))

    def redis_client(self, *, user: str = acl.ADMIN, socket_timeout: float | None = 10.0
                     ) -> redis.Redis:
        """A client of the master (through the sentinels in Sentinel mode)."""
        return connect(self.redis_url(user=user), sentinel=self.sentinel_config(),
                       socket_timeout=socket_timeout)

    def registry(self) -> Registry:
        """The registry as the admin, on the master (wherever the sentinels say it is)."""
        return Registry(self.redis_client())

    def _sentinel_env(self) -> list[str]:
        config = self.sentinel_config()
        if config is None:
            return []
        return ["MOBILITY_REDIS_SENTINELS=" + json.dumps([f"{h}:{p}" for h, p in config.sentinels]),
                f"MOBILITY_REDIS_SENTINEL_MASTER={config.master}",
                f"MOBILITY_REDIS_SENTINEL_PASSWORD={config.password}"]

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    @property
    def logs(self) -> Path:
        d = self.run_dir / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def redis_dir(self) -> Path:
        """Redis's configuration, ACL, passwords, component env files and data (0700)."""
        d = self.run_dir / "redis"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d

    def _password(self, user: str = acl.ADMIN) -> str:
        """A Redis user's password, from its 0600 file (made once, atomically)."""
        path = self.redis_dir / "passwords" / user
        if not path.exists():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            tmp = path.with_name(f".{user}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24) + "\n")
            try:
                os.link(tmp, path)  # fails if another process made it first: theirs wins
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip()

    def redis_url(self, *, from_lab: bool = False, user: str = acl.ADMIN) -> str:
        """Redis for ``user`` (the admin by default: the stack's own tools, tests, benches),
        from the host or, ``from_lab``, from inside the lab (the host link's address)."""
        host = self.plan.host_ip if from_lab else "127.0.0.1"
        return acl.with_credentials(f"redis://{host}:{self.redis_port}/0", user,
                                    self._password(user))

    def redis_users(self) -> dict[str, list[str]]:
        """Every component's Redis user with its rules (one per node agent)."""
        return acl.component_users(
            orchestration=ORCHESTRATION, node_queues=node_queue("*", "*"),
            orchestrator_worker=f"orchestrator@{self.plan.name}",
            agents={acl.agent_user(n.cluster, n.name): acl.CeleryRole(
                consumes=(node_queue(n.cluster, n.name),),
                worker=f"agent-{n.cluster}-{n.name}@{self.plan.name}") for n in self.plan.nodes},
        )

    def _locked_digest(self) -> str:
        """The default user's digest (no password has it), kept so the ACL file is stable."""
        path = self.redis_dir / "default.digest"
        if not path.exists():
            _write_private(path, acl.locked_digest() + "\n")
        return path.read_text().strip()

    def _credentials_key(self) -> str:
        """The key sealing cluster credentials, the same for the API and the orchestrator
        (without it each would derive its own from its own Redis URL)."""
        path = self.redis_dir / "credentials.key"
        if not path.exists():
            _write_private(path, base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        return path.read_text().strip()

    def component_env_file(self, user: str, *, from_lab: bool = False) -> Path:
        """The 0600 env file of a component running as ``user``: its Redis URL (and the
        orchestrator's: the state agents' URL and the credentials key; the API's: that key)."""
        lines = [f"MOBILITY_REDIS_URL={self.redis_url(from_lab=from_lab, user=user)}",
                 *self._sentinel_env()]
        if user == acl.ORCHESTRATOR:
            # where the state agents reach Redis, with no credentials: each move gives its
            # agents a user of its own (mobility.store.acl.StateUsers), limited to its keys
            lines.append(f"MOBILITY_STATE_REDIS_URL=redis://{self.plan.host_ip}:"
                         f"{self.redis_port}/0")
        if user in (acl.API, acl.ORCHESTRATOR):
            lines.append(f"MOBILITY_CREDENTIALS_KEY={self._credentials_key()}")
            lines.append(f"MOBILITY_IMAGE_DIR={self.image_dir}")
        path = self.redis_dir / f"{user}.env"
        _write_private(path, "\n".join(lines) + "\n")
        return path

    @property
    def api_url(self) -> str:
        scheme = "https" if get_settings().api_tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.api_port}"

    @property
    def token_file(self) -> Path:
        return self.run_dir / "token"

    def token(self) -> str:
        """The stack's own admin token (for its CLI, demo, benches and tests)."""
        return self.token_file.read_text().strip()

    def api_client(self, *, timeout: float = 60.0, follow: bool = True) -> ApiClient:
        cert = get_settings().api_tls_cert
        return ApiClient(self.api_url, token=self.token(), timeout=timeout, follow=follow,
                         verify=ssl.create_default_context(cafile=cert) if cert else True)

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

    def env(self, user: str | None = None, *, from_lab: bool = False,
            **extra: str) -> dict[str, str]:
        """A process's environment: no secret in it. A component (``user``: its Redis user)
        gets ``MOBILITY_ENV_FILE`` naming its own env file, which holds its credentials."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
        env.update(
            MOBILITY_LAB_NAME=self.plan.name,
            MOBILITY_API_PORT=str(self.api_port),
            MOBILITY_FAULT_INJECTION="1" if self.fault_injection else "0",
            MOBILITY_ENV_FILE=os.devnull,
            PYTHONUNBUFFERED="1",
        )
        if user is not None:
            env["MOBILITY_ENV_FILE"] = str(self.component_env_file(user, from_lab=from_lab))
        env.update(self.extra_env)
        env.update(extra)
        return env

    def _spawn(self, role: str, argv: list[str], env: dict[str, str], *,
               supervised: bool = True) -> int:
        """Start ``role`` unless it runs; a supervised role is restarted by the supervisor
        when it dies (its spec is left for it)."""
        log_path = self.logs / f"{role}.log"
        if supervised:
            supervise.write_spec(self.run_dir, role, argv=argv, env=env,
                                 cwd=str(self.run_dir), log_path=log_path)
        pid, proc = supervise.spawn(self.run_dir, role, argv=argv, env=env,
                                    cwd=str(self.run_dir), log_path=log_path)
        if proc is not None:
            _CHILDREN[proc.pid] = proc
            log.info("started %s as pid %s", role, proc.pid)
        return pid

    def ensure_supervisor(self) -> None:
        self._spawn("supervisor", [sys.executable, "-m", "cli.supervise", str(self.run_dir)],
                    self.env(), supervised=False)

    # --- the pieces ---

    def ensure_lab(self) -> None:
        topology.up(self.plan)

    def _write_redis_config(self) -> tuple[Path, bool]:
        """``redis.conf`` and ``users.acl`` (0600); whether the ACL file changed."""
        d = self.redis_dir
        users = self.redis_users()
        acl_path = d / "users.acl"
        changed = _write_private(acl_path, acl.acl_file(
            users, {u: self._password(u) for u in users}, default_digest=self._locked_digest()))
        conf = d / "redis.conf"
        _write_private(conf, "\n".join([
            "# Written by the lab stack (cli/stack.py). No password here: users.acl holds the",
            "# users, with SHA-256 digests of their passwords only.",
            f"port {self.redis_port}",
            f"bind 127.0.0.1 -{self.plan.host_ip}",
            "protected-mode yes",
            "daemonize no",
            f'dir "{d}"',
            f'aclfile "{acl_path}"',
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            "",
        ]))
        return conf, changed

    def ensure_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed: run scripts/setup.sh "
                             "(or apt-get install redis-server)")
        if topology.recorded_pid(self.run_dir, "redis") is None and _port_open(
                "127.0.0.1", self.redis_port):
            raise StackError(f"port {self.redis_port} is taken by a process this lab did not "
                             "start; set MOBILITY_STACK_REDIS_PORT to another port")
        running = topology.recorded_pid(self.run_dir, "redis") is not None
        conf, acl_changed = self._write_redis_config()
        self._spawn("redis", [binary, str(conf)], self.env())
        client = redis.Redis.from_url(self.redis_url(), socket_timeout=1)

        def pong() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        _wait("redis", pong, 15, self.logs / "redis.log")
        if running and acl_changed:
            # users added (or rules changed) while it runs; only then: a reload drops the
            # per-move users of moves in flight
            client.acl_load()
        # Redis was perhaps started before the lab's host link existed: listen there too now.
        client.config_set("bind", f"127.0.0.1 -{self.plan.host_ip}")
        if self.env_file:
            # for the person's `mobility` commands on this host: the admin user
            path = Path(self.env_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_private(path, f"MOBILITY_REDIS_URL={self.redis_url()}\n"
                                 f"MOBILITY_LAB_NAME={self.plan.name}\n"
                                 f"MOBILITY_API_PORT={self.api_port}\n"
                                 f"MOBILITY_TOKEN_FILE={self.token_file}\n"
                                 + "".join(f"{line}\n" for line in self._sentinel_env()))
        Registry(client).ping()
        if self.sentinel:
            self.ensure_sentinels(client)
        reg = self.registry()
        for cluster in lab_clusters(self.plan):
            reg.put_cluster(cluster)
        self._ensure_token(reg)

    def ensure_sentinels(self, master: redis.Redis) -> None:
        """The replica and the sentinels (Sentinel mode), each started unless it runs.

        Replication and the sentinels authenticate as the admin user. The replica's and
        master's ``masteruser``/``masterauth`` are set at run time (a demoted master needs them
        too), so no Redis configuration file holds a password; the sentinels' files do (0600:
        a sentinel needs its master's password at start and rewrites its file itself)."""
        binary = shutil.which("redis-server")
        assert binary is not None  # ensure_redis checked
        host = self.plan.host_ip
        d = self.redis_dir / "replica"
        d.mkdir(mode=0o700, exist_ok=True)
        conf = d / "redis.conf"
        if not conf.exists():  # Redis rewrites it after a failover (CONFIG REWRITE): kept
            _write_private(conf, "\n".join([
                "# Written by the lab stack (cli/stack.py): the master's replica. No password",
                "# here: the stack sets masteruser/masterauth at run time.",
                f"port {self.replica_port}", f"bind 127.0.0.1 -{host}", "protected-mode yes",
                "daemonize no", f'dir "{d}"',
                f'aclfile "{self.redis_dir / "users.acl"}"', 'save ""', "appendonly yes",
                "appendfsync everysec", f"replicaof {host} {self.redis_port}", ""]))
        self._spawn("redis-replica", [binary, str(conf)], self.env())
        replica = redis.Redis.from_url(self.redis_url().replace(
            f":{self.redis_port}/", f":{self.replica_port}/"), socket_timeout=1)

        def pong() -> bool:
            try:
                return bool(replica.ping())
            except redis.RedisError:
                return False

        _wait("redis replica", pong, 15, self.logs / "redis-replica.log")
        for server in (master, replica):
            server.config_set("masteruser", acl.ADMIN)
            server.config_set("masterauth", self._password())
        replica.close()
        for i, port in enumerate(self.sentinel_ports):
            sd = self.redis_dir / f"sentinel-{i}"
            sd.mkdir(mode=0o700, exist_ok=True)
            sconf = sd / "sentinel.conf"
            name = self.sentinel_master
            if not sconf.exists():  # each sentinel rewrites its own file: kept
                _write_private(sconf, "\n".join([
                    "# Written by the lab stack (cli/stack.py); the sentinel rewrites it.",
                    f"port {port}", f"bind 127.0.0.1 -{host}", "daemonize no", f'dir "{sd}"',
                    f"requirepass {self._password(SENTINEL_SECRET)}",
                    f"sentinel sentinel-pass {self._password(SENTINEL_SECRET)}",
                    f"sentinel monitor {name} {host} {self.redis_port} {SENTINEL_QUORUM}",
                    f"sentinel auth-user {name} {acl.ADMIN}",
                    f"sentinel auth-pass {name} {self._password()}",
                    f"sentinel down-after-milliseconds {name} {SENTINEL_DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {name} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {name} 1", ""]))
            self._spawn(f"sentinel-{i}", [binary, str(sconf), "--sentinel"], self.env())
        config = self.sentinel_config()
        assert config is not None

        def agreed() -> bool:
            """Every sentinel knows the master, its replica and the other sentinels."""
            for h, p in config.sentinels:
                try:
                    s = redis.Redis(host=h, port=p, password=config.password, socket_timeout=1,
                                    decode_responses=True)
                    state = s.sentinel_master(name)
                    s.close()
                except redis.RedisError:
                    return False
                if not isinstance(state, dict):
                    return False
                if int(state.get("num-slaves", 0)) < 1 or int(
                        state.get("num-other-sentinels", 0)) < len(config.sentinels) - 1:
                    return False
            return True

        _wait("redis sentinels", agreed, 30, self.logs / "sentinel-0.log")

    @property
    def containerd_paths(self) -> containers.ContainerdPaths:
        return containers.ContainerdPaths(self.run_dir)

    @property
    def image_dir(self) -> Path:
        """Where this lab keeps the archives of imported images (outside the run
        directory: a lab brought down and up again still has them)."""
        return Path(get_settings().image_dir) / self.plan.name

    def ensure_containerd(self) -> None:
        """The lab's own containerd: root, state and socket under the run directory, so it
        never touches a host's containerd (nor another lab's)."""
        if shutil.which("containerd") is None or shutil.which("runc") is None:
            raise StackError("containerd and runc are not installed: run scripts/setup.sh "
                             "(or apt-get install containerd runc)")
        paths = self.containerd_paths
        paths.write_config()
        self._spawn("containerd", paths.argv(), self.env())
        ctr = paths.client(self.plan.name)
        try:
            ctr.wait_up(30)
        except DataplaneError as exc:
            tail = (self.logs / "containerd.log").read_text()[-2000:]
            raise StackError(f"containerd did not come up: {exc}\n{tail}") from exc

    def ensure_images(self, *, progress: Callable[[str], None] = lambda _: None) -> None:
        """The reference images (built once per machine, cached) and every image imported
        before, loaded into the lab's runtime and catalogued."""
        from workers import images as image_tasks

        ctr = self.containerd_paths.client(self.plan.name)
        reg = self.registry()
        held = {i.name for i in ctr.images()}
        try:
            archives = lab_images.build_reference()
        except lab_images.ReferenceImageError as exc:
            raise StackError(str(exc)) from exc
        if not all(name in held and reg.get_image(name) is not None for name in archives):
            # one bundle of all of them: ctr sends every blob of an archive, even those it
            # holds, so six archives sharing a rootfs would send it six times
            progress("reference images")
            image_tasks.load(reg, ctr, lab_images.bundle_path(), source="reference")
            for name, archive in archives.items():  # each keeps its own archive (--from)
                record = reg.get_image(name)
                if record is not None:
                    reg.put_image(dataclasses.replace(record, archive=str(archive)))
        # reference images of an older source tree go, unless a service still runs one
        in_use = {s.container.image for s in reg.services().values()}
        for record in reg.images():
            if (record.source == "reference" and record.name not in archives
                    and record.name not in in_use):
                ctr.remove_image(record.name)
                reg.delete_image(record.name)
        kept = image_tasks.load_kept(reg, ctr, self.image_dir)
        if kept:
            progress(f"{len(kept)} imported image(s)")

    def ensure_agents(self) -> None:
        for n in self.plan.nodes:
            self._spawn(f"agent-{n.cluster}-{n.name}", [
                "nsenter", f"--net=/run/netns/{n.namespace}", sys.executable, "-m", "celery",
                "-A", "workers.app", "worker", "-Q", node_queue(n.cluster, n.name),
                "-P", "solo", "-n", f"agent-{n.cluster}-{n.name}@{self.plan.name}",
                "--without-gossip", "--without-mingle", "-l", "INFO",
            ], self.env(acl.agent_user(n.cluster, n.name), from_lab=True,
                        MOBILITY_NODE=f"{n.cluster}/{n.name}"))

    def ensure_orchestrator(self) -> None:
        """The orchestration worker: a pool of threads (``orchestrator_threads``), since a phase
        mostly waits (on a node's answer, on state flowing between two agents) and holds its
        thread meanwhile; with prefetch one per thread, a task is taken only by a free one."""
        threads = int(self.extra_env.get("MOBILITY_ORCHESTRATOR_THREADS",
                                         get_settings().orchestrator_threads))
        self._spawn("orchestrator", [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", ORCHESTRATION,
            "-P", "threads", "-c", str(threads), "-n", f"orchestrator@{self.plan.name}",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ], self.env(acl.ORCHESTRATOR))

    def ensure_beat(self) -> None:
        # --max-interval: redbeat retries its lock that often. Redis keeps the lock of a beat
        # that died (the append-only file), for redbeat_lock_timeout; with Celery's default
        # (300 s) the beat started in its place would wait up to five minutes to tick.
        self._spawn("beat", [
            sys.executable, "-m", "celery", "-A", "workers.app", "beat",
            "-s", str(self.run_dir / "beat-schedule"), "--max-interval", str(BEAT_MAX_INTERVAL_S),
            "-l", "INFO",
        ], self.env(acl.BEAT))

    def ensure_api(self) -> None:
        if topology.recorded_pid(self.run_dir, "api") is None and _port_open(
                "127.0.0.1", self.api_port):
            raise StackError(f"port {self.api_port} is taken by a process this lab did not "
                             "start; set MOBILITY_API_PORT to another port")
        tls = get_settings()
        extra = (["--ssl-certfile", tls.api_tls_cert, "--ssl-keyfile", tls.api_tls_key]
                 if tls.api_tls_cert and tls.api_tls_key else [])  # optional TLS
        self._spawn("api", [
            sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
            "--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning",
            *extra,
        ], self.env(acl.API))

    def up(self, *, progress: Callable[[str], None] = lambda _: None) -> None:
        progress("lab namespaces")
        self.ensure_lab()
        progress("redis")
        self.ensure_redis()
        progress("containerd")
        self.ensure_containerd()
        self.ensure_images(progress=progress)
        progress("node agents, orchestrator, beat, api")
        self.ensure_agents()
        self.ensure_orchestrator()
        self.ensure_beat()
        self.ensure_api()
        self.ensure_supervisor()
        progress("waiting for every process to answer")
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        app = client(self.redis_url(), sentinel=self.sentinel_config())

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
        """Stop ``role`` on purpose: the supervisor leaves it stopped (its spec goes first)."""
        supervise.drop_spec(self.run_dir, role)
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


def _write_private(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` (0600, atomically) unless it holds it already; whether it
    changed."""
    try:
        if path.read_text() == text:
            os.chmod(path, 0o600)
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return True


def reap_children() -> None:
    """Collect the exit status of every child that has ended."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]
