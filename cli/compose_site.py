"""A compose site on this machine: its own dockerd, locally built images, two lab nodes.

``python -m cli.compose_site build|up|down`` (``scripts/compose_site.sh``) runs
``docker-compose.yml`` for real, the way a site runs it, with what this kind of machine lacks
made here:

- **dockerd of its own** (Debian's docker.io, no systemd): data root under the cache (kept, so
  built images survive; one dockerd at a time uses it, under an ``flock`` the daemon itself
  holds), exec root, pidfile, socket and log under ``/run/service-mobility-compose/<name>/
  docker``; its bridge in 198.19.250.0/24 and its address pool in 198.19.251.0/24 (the rest of
  198.18.0.0/15 belongs to the labs), no iptables rules, no masquerading. Published ports work
  through docker-proxy.
- **Images built locally**, no registry: ``scripts/base_rootfs.sh``'s Debian rootfs imported as
  ``service-mobility-base:<hash of its package list>``; the project's image (Dockerfile) and
  Redis's (docker/redis.Dockerfile, Debian's redis-server) built FROM it with the host network.
  PyPI is reached by the host's pip (through the host's CA bundle, which stays out of every
  image) into a wheelhouse the build installs from. Each tag is a hash of what went in, so an
  unchanged tree is not built again.
- **Nodes**: a lab topology (:mod:`dataplane.lab.topology`) with the nodes of
  docker-compose.yml's agents (core/n1, edge/n1, edge/n2); each agent container enters its node's
  network namespace. The lab's containerd runs on the host (``cli.stack.Stack``'s, under the
  lab's run directory), the agents reach its socket through their bind mount; /run/netns is
  made a shared mount (as ``ip netns add`` does) so the pod namespaces an agent makes are the
  host's.
- **The site's files** under ``/run/service-mobility-compose/<name>/site`` (0700, outside the
  lab's run directory, which the agents mount): ``secrets/`` (:mod:`cli.redis_secrets`),
  ``site.env`` (the compose variables; no secret) and ``token`` (an admin API token, 0600).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from cli import redis_secrets
from cli.stack import Stack, lab_clusters, reap_children
from dataplane.lab import images as lab_images
from dataplane.lab import topology
from dataplane.lab.topology import ClusterConfig, LabConfig, LabPlan
from mobility import tokens
from mobility.store import Registry, acl
from mobility.tokens import Role
from workers import images as image_tasks
from workers.app import client
from workers.routing import ORCHESTRATION, node_queue

REPO = Path(__file__).resolve().parent.parent
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client, of the daemon's version (not /usr/local/bin's)
COMPOSE = "/usr/bin/docker-compose"
BRIDGE = "198.19.250.1/24"
POOL = "base=198.19.251.0/24,size=26"
HOME_ROOT = Path(os.environ.get("MOBILITY_COMPOSE_ROOT", "/run/service-mobility-compose"))
CACHE = Path(os.environ.get("MOBILITY_CACHE", "/root/.cache/service-mobility"))
NETNS = Path("/run/netns")
# The nodes with an agent in docker-compose.yml (one per cluster).
NODES: tuple[tuple[str, str], ...] = (("core", "n1"), ("edge", "n1"), ("edge", "n2"))
PACKAGES = ("mobility", "workers", "state_transfer", "dataplane", "api", "cli")
# Requirements the image's interpreter (Debian's 3.11.2) needs and the host's (a later 3.11)
# does not, so the host's pip leaves them out of the wheelhouse: redis-py's, before 3.11.3.
IMAGE_ONLY_REQUIREMENTS = ("async-timeout>=4.0.3",)


# The Popen objects of the daemons this process started: kept so none is collected (and
# reported) while it runs, and reaped once it ends.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ComposeSiteError(RuntimeError):
    """The site could not be built, started or stopped; the message says what to do."""


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None, what: str,
         timeout: float = 900, check: bool = True) -> str:
    proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise ComposeSiteError(f"{what} failed ({proc.returncode}):\n"
                               f"{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ComposeSiteError(f"{what} within {timeout:g} s")
        time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass(frozen=True)
class Dockerd:
    """A dockerd of this site's own; ``home`` is unique to the site."""

    home: Path
    data_root: Path = CACHE / "docker"

    @property
    def socket(self) -> Path:
        return self.home / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.home / "dockerd.pid"

    @property
    def exec_root(self) -> Path:
        return self.home / "exec"

    @property
    def log(self) -> Path:
        return self.home / "dockerd.log"

    def env(self) -> dict[str, str]:
        """The clients' environment: this daemon, and a config dir of its own (the host's
        ~/.docker may name credential helpers that call out). No ``MOBILITY_*`` of the
        caller's: docker-compose would let them override the site's own values, and a secret
        among them would reach dockerd."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DOCKER_", "MOBILITY_", "COMPOSE_"))}
        env.update(DOCKER_HOST=f"unix://{self.socket}", DOCKER_CONFIG=str(self.home / "config"),
                   COMPOSE_INTERACTIVE_NO_CLI="1")
        return env

    def docker(self, *args: str, what: str | None = None, timeout: float = 900) -> str:
        return _run([DOCKER, *args], env=self.env(), what=what or f"docker {args[0]}",
                    timeout=timeout)

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            # this site's dockerd, not a process that took a stale pidfile's PID
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
        ours = Path(cmdline[0].decode()).name == "dockerd" and str(self.pidfile).encode() in cmdline
        return pid if ours and _pid_alive(pid) else None

    def answers(self) -> bool:
        proc = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"],
                              env=self.env(), capture_output=True, text=True, timeout=20,
                              check=False)
        return proc.returncode == 0

    def start(self, *, timeout: float = 600) -> int:
        """Start the daemon (or keep the one running); its PID. Waits up to ``timeout`` for
        another site's daemon to give the data root up."""
        pid = self.pid()
        if pid is not None:
            return pid
        if not (os.path.exists(DOCKERD) and os.path.exists(DOCKER)):
            raise ComposeSiteError(f"{DOCKERD} or {DOCKER} is missing: run scripts/setup.sh "
                                   "(apt-get install docker.io docker-compose)")
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.home / "config").mkdir(mode=0o700, exist_ok=True)
        self.data_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(self.data_root.parent / "docker.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ComposeSiteError(
                            f"another dockerd holds {self.data_root} (its lock) for more than "
                            f"{timeout:g} s") from None
                    time.sleep(1)
            argv = [DOCKERD, "--data-root", str(self.data_root),
                    "--exec-root", str(self.exec_root), "--pidfile", str(self.pidfile),
                    "--host", f"unix://{self.socket}", "--bip", BRIDGE,
                    "--default-address-pool", POOL, "--iptables=false", "--ip-masq=false",
                    "--ip6tables=false", "--storage-driver", "overlay2"]
            with open(self.log, "ab") as logf:
                # the daemon inherits the lock's descriptor: it holds the data root while it
                # lives, whoever started it
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        pass_fds=(lock,), env=self.env())
            _CHILDREN[proc.pid] = proc
        finally:
            os.close(lock)

        def up() -> bool:
            if proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise ComposeSiteError(f"dockerd exited with {proc.returncode}:\n{tail}")
            return self.answers()

        try:
            _wait("dockerd did not answer", up, 60)
        except BaseException:
            self.stop()
            raise
        return proc.pid

    def stop(self, *, timeout: float = 30) -> None:
        """End the daemon by its PID (SIGTERM, then SIGKILL); it stops its containerd."""
        pid = self.pid()
        if pid is not None:
            self._end(pid, timeout)
        # dockerd 20.10 leaves the host namespace's bind mount (exec-root/netns/default)
        for mount in sorted(self.mounts(), reverse=True):
            _run(["umount", mount], what=f"umount {mount}")
        # and its default bridge: removed when it is the one made here (its address ours)
        if self.pid() is None and self.bridge_left():
            _run(["ip", "link", "del", "docker0"], what="ip link del docker0")

    def bridge_left(self) -> bool:
        """Whether the default bridge with this daemon's address is still there."""
        return BRIDGE in _run(["ip", "-o", "-4", "addr", "show", "dev", "docker0"],
                              what="ip addr", check=False)

    def _end(self, pid: int, timeout: float) -> None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            _wait("dockerd did not end", lambda: not _pid_alive(pid), 10)
        proc = _CHILDREN.pop(pid, None)
        if proc is not None:  # our child: reap it
            proc.wait(10)

    def mounts(self) -> list[str]:
        """Mount points under this daemon's home."""
        mark = str(self.home)
        with open("/proc/self/mountinfo") as fh:
            return [f for f in (line.split()[4] for line in fh)
                    if f == mark or f.startswith(mark + "/")]

    def processes(self) -> list[int]:
        """PIDs of every process whose command line names this daemon's home (dockerd, its
        containerd, shims)."""
        mark = str(self.home).encode()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if mark in cmdline and _pid_alive(int(entry)):
                    found.append(int(entry))
        return found


# --- images ---


def _hash_files(paths: Iterable[Path], *, root: Path, extra: Iterable[str] = ()) -> str:
    h = hashlib.sha256()
    for item in extra:
        h.update(item.encode() + b"\0")
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _sources(root: Path) -> list[Path]:
    files = [root / "pyproject.toml", root / "README.md"]
    for pkg in PACKAGES:
        files += [p for p in (root / pkg).rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return files


def _requirements(root: Path) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], "setuptools>=68", "wheel", *IMAGE_ONLY_REQUIREMENTS]


def _has_image(d: Dockerd, name: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", name], env=d.env(),
                          capture_output=True, check=False).returncode == 0


@dataclass(frozen=True)
class Images:
    app: str
    redis: str

    @property
    def app_tag(self) -> str:
        return self.app.rsplit(":", 1)[1]

    @property
    def redis_tag(self) -> str:
        return self.redis.rsplit(":", 1)[1]


def base_image(d: Dockerd, *, progress: Callable[[str], None]) -> str:
    """The Debian rootfs of scripts/base_rootfs.sh, imported once per package list."""
    out = _run(["bash", str(REPO / "scripts" / "base_rootfs.sh")], what="scripts/base_rootfs.sh")
    rootfs = Path(out.strip().splitlines()[-1])
    stamp = (rootfs / "etc" / "service-mobility-rootfs").read_bytes()
    name = f"service-mobility-base:{hashlib.sha256(stamp).hexdigest()[:12]}"
    if not _has_image(d, name):
        progress(f"importing {rootfs} as {name}")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)
        imp = subprocess.run([DOCKER, "import", "-", name], stdin=tar.stdout, env=d.env(),
                             capture_output=True, text=True, check=False)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise ComposeSiteError(f"docker import of {rootfs} failed: {imp.stderr[-2000:]}")
    return name


def _wheelhouse(requirements: list[str], *, progress: Callable[[str], None]) -> Path:
    """Wheels for every requirement, downloaded by the host's pip once per requirement list."""
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    house = CACHE / "compose" / "wheels" / key
    if not (house / "requirements.txt").exists():
        progress("downloading the wheels (host pip)")
        house.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=house.parent))
        try:
            _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                  "-d", str(tmp), *requirements], what="pip download")
            (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
            tmp.rename(house)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return house


def build(d: Dockerd, *, progress: Callable[[str], None] = lambda _: None) -> Images:
    """The site's two images, built unless their tags exist."""
    base = base_image(d, progress=progress)
    redis_file = REPO / "docker" / "redis.Dockerfile"
    redis_name = (f"service-mobility-redis:"
                  f"{_hash_files([redis_file], root=REPO, extra=[base])}")
    if not _has_image(d, redis_name):
        progress(f"building {redis_name}")
        d.docker("build", "--force-rm", "--network", "host", "--build-arg", f"BASE={base}",
                 "-t", redis_name, "-f", str(redis_file), str(redis_file.parent),
                 what=f"building {redis_name}")
    requirements = _requirements(REPO)
    recipe = [REPO / "Dockerfile", REPO / ".dockerignore"]
    app_tag = _hash_files([*recipe, *_sources(REPO)], root=REPO, extra=[base, *requirements])
    app_name = f"service-mobility:{app_tag}"
    if not _has_image(d, app_name):
        house = _wheelhouse(requirements, progress=progress)
        progress(f"building {app_name}")
        staging = Path(tempfile.mkdtemp(prefix="context.", dir=house.parent.parent))
        try:
            for src in [REPO / "pyproject.toml", REPO / "README.md", REPO / ".dockerignore"]:
                shutil.copy2(src, staging / src.name)
            for pkg in PACKAGES:
                shutil.copytree(REPO / pkg, staging / pkg,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            shutil.copytree(house, staging / "wheels")
            d.docker("build", "--force-rm", "--network", "host", "--build-arg",
                     f"BASE={base}", "-t", app_name, "-f", str(REPO / "Dockerfile"),
                     str(staging), what=f"building {app_name}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    # older trees' images go (the data root is a cache, not an archive); the build cache of
    # the venv stage (untagged) stays, so a new tree rebuilds only the project's layers
    for repo, keep in (("service-mobility", app_name), ("service-mobility-redis", redis_name),
                       ("service-mobility-base", base)):
        old = [n for n in d.docker("images", repo, "--format",
                                   "{{.Repository}}:{{.Tag}}").split() if n != keep]
        if old:
            d.docker("rmi", *old, what="removing older images")
    return Images(app=app_name, redis=redis_name)


# --- the site ---


def site_plan(name: str, underlay: str) -> LabPlan:
    """The lab of a compose site: the nodes of docker-compose.yml's agents."""
    counts: dict[str, int] = {}
    for cluster, _ in NODES:
        counts[cluster] = counts.get(cluster, 0) + 1
    return topology.plan(LabConfig(name=name, underlay=underlay, clusters=tuple(
        ClusterConfig(name=c, nodes=n, labels={"tier": c}) for c, n in counts.items())))


def share_netns() -> None:
    """/run/netns as a shared mount point (what ``ip netns add`` makes of it), so namespaces
    an agent container mounts there are the host's and the host's are the agents'."""
    NETNS.mkdir(parents=True, exist_ok=True)
    with open("/proc/self/mountinfo") as fh:
        mine = [line.split() for line in fh if line.split()[4] == str(NETNS)]
    if not mine:
        _run(["mount", "--bind", str(NETNS), str(NETNS)], what="mount --bind /run/netns")
    if not any(f.startswith("shared:") for line in mine for f in line[6:line.index("-")]):
        _run(["mount", "--make-shared", str(NETNS)], what="mount --make-shared /run/netns")


@dataclass
class Site:
    plan: LabPlan
    redis_port: int = 6379
    api_port: int = 8470

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def home(self) -> Path:
        return HOME_ROOT / self.name

    @property
    def site_dir(self) -> Path:
        return self.home / "site"

    @property
    def secrets_dir(self) -> Path:
        return self.site_dir / "secrets"

    @property
    def dockerd(self) -> Dockerd:
        return Dockerd(self.home / "docker")

    @property
    def token_file(self) -> Path:
        return self.site_dir / "token"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def token(self) -> str:
        return self.token_file.read_text().strip()

    def admin_url(self) -> str:
        """Redis as the admin user reaches it from the host (for this tool and the tests)."""
        password = (self.secrets_dir / "passwords" / acl.ADMIN).read_text().strip()
        return acl.with_credentials(f"redis://127.0.0.1:{self.redis_port}/0", acl.ADMIN,
                                    password)

    def compose(self, *args: str, what: str | None = None, timeout: float = 300) -> str:
        return _run([COMPOSE, "--project-directory", str(self.site_dir),
                     "-f", str(REPO / "docker-compose.yml"),
                     "--env-file", str(self.site_dir / "site.env"), "-p", self.name, *args],
                    env=self.dockerd.env(), what=what or f"docker-compose {args[0]}",
                    timeout=timeout)

    def write_files(self, images: Images) -> None:
        self.site_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        redis_secrets.write(self.secrets_dir, NODES, host="redis",
                            agent_host=self.plan.host_ip, state_host=self.plan.host_ip,
                            port=6379, agent_port=self.redis_port)
        (self.site_dir / "site.env").write_text("\n".join([
            "# Written by python -m cli.compose_site: the compose variables (no secret)",
            f"MOBILITY_IMAGE_TAG={images.app_tag}",
            f"MOBILITY_REDIS_IMAGE_TAG={images.redis_tag}",
            f"MOBILITY_LAB_NAME={self.name}",
            f"MOBILITY_SECRETS={self.secrets_dir}",
            f"MOBILITY_REDIS_PORT={self.redis_port}",
            f"MOBILITY_REDIS_AGENT_ADDRESS={self.plan.host_ip}",
            f"MOBILITY_API_PORT={self.api_port}",
            "",
        ]))

    def up(self, *, progress: Callable[[str], None] = lambda _: None,
           timeout: float = 180) -> None:
        """Everything, idempotently: dockerd, images, nodes, compose up, registration,
        the lab's containerd and its images, a token; returns when every part answers."""
        progress("dockerd")
        self.dockerd.start()
        images = build(self.dockerd, progress=progress)
        progress("lab nodes")
        topology.up(self.plan)
        share_netns()
        self.write_files(images)
        progress("docker-compose up")
        self.compose("up", "-d", "--no-build")
        reg = Registry(redis.Redis.from_url(self.admin_url(), socket_timeout=2))

        def pong() -> bool:
            try:
                return bool(reg.r.ping())
            except redis.RedisError:
                return False

        _wait("redis did not answer", pong, timeout)
        for cluster in lab_clusters(self.plan):  # the nodes, known to the registry
            reg.put_cluster(cluster)
        self._ensure_token(reg)
        progress("the lab's containerd and images")
        stack = Stack(plan=self.plan, env_file=None)
        stack.ensure_containerd()
        self._load_images(reg, stack)
        progress("waiting for the agents, the orchestrator and the API")
        self.wait_ready(timeout)

    def _ensure_token(self, reg: Registry) -> None:
        if self.token_file.exists():
            parsed = tokens.parse(self.token())
            known = reg.get_token(parsed[0]) if parsed else None
            if parsed and known is not None and known.matches(parsed[1]):
                return
        record, secret = tokens.mint(role=Role.ADMIN, name=f"{self.name} compose site")
        reg.put_token(record)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")

    def _load_images(self, reg: Registry, stack: Stack) -> None:
        """The reference images (the lab's workloads) in the lab's containerd, catalogued."""
        ctr = stack.containerd_paths.client(self.name)
        archives = lab_images.build_reference()
        held = {i.name for i in ctr.images()}
        if all(n in held and reg.get_image(n) is not None for n in archives):
            return
        image_tasks.load(reg, ctr, lab_images.bundle_path(), source="reference")
        for name, archive in archives.items():
            record = reg.get_image(name)
            if record is not None:
                reg.put_image(dataclasses.replace(record, archive=str(archive)))

    def wait_ready(self, timeout: float) -> None:
        app = client(self.admin_url())

        def answers(task: str, queue: str) -> Callable[[], bool]:
            def check() -> bool:
                res = app.send_task(task, args=[{}] if task == "node.ping" else [],
                                    queue=queue, expires=5)
                try:
                    res.get(timeout=2)
                    return True
                except Exception:
                    return False
                finally:
                    res.forget()

            return check

        for cluster, node in NODES:
            _wait(f"agent {cluster}/{node} did not answer",
                  answers("node.ping", node_queue(cluster, node)), timeout)
        _wait("the orchestrator did not answer", answers("orchestrator.ping", ORCHESTRATION),
              timeout)

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("the API's /healthz did not say ok", healthy, timeout)

    def down(self, *, stop_dockerd: bool = True) -> None:
        """compose down -v, then (``stop_dockerd``) the daemon, then the lab's nodes."""
        try:
            if self.dockerd.pid() is not None and (self.site_dir / "site.env").exists():
                self.compose("down", "-v", "--remove-orphans", "--timeout", "5")
        finally:
            try:
                if stop_dockerd:
                    self.dockerd.stop()
            finally:
                topology.down(self.name)
                reap_children()

    def left(self) -> dict[str, list[str]]:
        """What of this site is still there (containers, networks, volumes while dockerd
        runs; its processes, namespaces and mounts)."""
        found: dict[str, list[str]] = {}
        if self.dockerd.pid() is not None:
            label = f"label=com.docker.compose.project={self.name}"
            for kind, args in (("containers", ["ps", "-a", "-q", "--filter", label]),
                               ("networks", ["network", "ls", "-q", "--filter", label]),
                               ("volumes", ["volume", "ls", "-q", "--filter", label])):
                found[kind] = self.dockerd.docker(*args).split()
        found["processes"] = [str(p) for p in self.dockerd.processes()]
        if self.dockerd.pid() is None and self.dockerd.bridge_left():
            found["bridge"] = ["docker0"]
        found["namespaces"] = topology.namespaces_left(self.name)
        with open("/proc/self/mountinfo") as fh:
            marks = (str(self.home), str(self.plan.run_dir), str(self.dockerd.data_root))
            found["mounts"] = [line.split()[4] for line in fh
                               if any(line.split()[4].startswith(m) for m in marks)]
        return {k: v for k, v in found.items() if v}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/compose_site.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["build", "up", "down", "status"])
    parser.add_argument("--name", default="smsite", help="the site's (and its lab's) name")
    parser.add_argument("--underlay", default="198.18.0.0/16",
                        help="the lab's /16 inside 198.18.0.0/15 (not one another lab uses)")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--api-port", type=int, default=8470)
    args = parser.parse_args(argv)
    site = Site(plan=site_plan(args.name, args.underlay), redis_port=args.redis_port,
                api_port=args.api_port)

    def say(msg: str) -> None:
        print(f"[compose_site] {msg}", file=sys.stderr)

    try:
        if args.action == "build":
            site.dockerd.start()
            images = build(site.dockerd, progress=say)
            print(f"{images.app}\n{images.redis}")
        elif args.action == "up":
            site.up(progress=say)
            print(f"API: {site.api_url} (token in {site.token_file})\n"
                  f"docker: DOCKER_HOST=unix://{site.dockerd.socket} {DOCKER} ...\n"
                  f"compose: {COMPOSE} --project-directory {site.site_dir} -f "
                  f"{REPO / 'docker-compose.yml'} --env-file {site.site_dir / 'site.env'} "
                  f"-p {site.name} ps")
        elif args.action == "down":
            site.down()
            left = site.left()
            if left:
                say(f"left behind: {left}")
                return 1
            shutil.rmtree(site.home, ignore_errors=True)
        else:
            print(site.compose("ps") if site.dockerd.pid() else "dockerd is not running")
    except ComposeSiteError as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
