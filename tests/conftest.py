"""Shared fixtures: unique names, the root check, and a real Redis server per test session.

Aspects: tests that need root or a Redis binary fail (never skip) when they cannot run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces); run the suite as root")


def unique_prefix(tag: str = "smt") -> str:
    return f"{tag}{secrets.token_hex(2)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process of our own, on a free loopback port, with a password.

    The password is in no command line: the server reads a 0600 configuration file in
    ``workdir`` that holds the ``default`` user's SHA-256 digest only. ``appendonly``: with the
    append-only file (``appendfsync everysec``), so :meth:`restart` keeps the data. ``aclfile``:
    the users are that ACL file's (then :attr:`url`, the ``default`` user's, is the file's
    business; use :meth:`url_for`).
    """

    def __init__(self, workdir: Path, *, appendonly: bool = False,
                 aclfile: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; scripts/setup.sh installs it")
        self.binary = binary
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.workdir = workdir
        self.config = workdir / "redis.conf"
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"port {self.port}\nbind 127.0.0.1\nsave \"\"\ndir \"{workdir}\"\n"
                     f"appendonly {'yes' if appendonly else 'no'}\nappendfsync everysec\n")
            fh.write(f'aclfile "{aclfile}"\n' if aclfile is not None
                     else f"user default on #{digest} ~* &* +@all\n")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not start")

    def restart(self, *, crash: bool = False) -> None:
        """Stop (``crash``: SIGKILL, no last write of the append-only file) and start again,
        on the same port, with the same configuration and data."""
        if crash and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def url_for(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="smt-redis-") as tmp:
        server = RedisServer(Path(tmp))
        yield server
        server.stop()


# The demo lab keeps 198.18.0.0/16, so both can be up at once. MOBILITY_TEST_UNDERLAY picks
# another /16 of 198.18.0.0/15, so two test runs (a developer's and a fresh clone's) can too.
TEST_UNDERLAY = os.environ.get("MOBILITY_TEST_UNDERLAY", "198.19.0.0/16")
# A lab a test brings up beside the session's (a stack in Sentinel mode, a compose site) needs
# a /16 of its own: two labs on one /16 share the host's route and address for it, and the
# second one's teardown cuts the first one's nodes off from Redis. The other /16 of
# 198.18.0.0/15 (the demo lab's, when the tests run on 198.19.0.0/16: such a test and the
# demo lab cannot run at once), or MOBILITY_TEST_UNDERLAY2.
SECOND_UNDERLAY = os.environ.get(
    "MOBILITY_TEST_UNDERLAY2",
    "198.18.0.0/16" if TEST_UNDERLAY != "198.18.0.0/16" else "198.19.0.0/16")
STATE_TTL_S = 2  # a move's state keys live this long after it ends, in the test stack


@pytest.fixture(scope="session")
def lab_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A whole lab with its control plane: Redis, node agents, orchestrator, beat and API.

    Real processes on real namespaces, under a unique lab name; torn down at the end, and the
    teardown checks that no namespace, host link or process of the lab is left.
    """
    require_root()
    from cli.stack import Stack
    from dataplane.lab import topology

    name = unique_prefix("smt")
    plan = topology.plan(topology.load_config(name=name, underlay=TEST_UNDERLAY))
    env_file = tmp_path_factory.mktemp("stack") / "stack.env"
    stack = Stack(plan=plan, redis_port=free_port(), api_port=free_port(), fault_injection=True,
                  env_file=str(env_file), extra_env={"MOBILITY_STATE_TTL_S": str(STATE_TTL_S),
                             # move notifications' receivers in the tests listen on loopback
                             "MOBILITY_SUBSCRIPTION_ALLOW_HOSTS": '["127.0.0.1/32"]'})
    try:
        stack.up()
        yield stack
    finally:
        import shutil

        from cli.stack import reap_children
        from dataplane import containers

        topology.down(name)
        # the archives it kept of images imported in the tests (the lab's name is the
        # session's own: nothing else keeps images there)
        shutil.rmtree(stack.image_dir, ignore_errors=True)
        reap_children()
        left = topology.namespaces_left(name)
        assert left == [], f"lab namespaces left behind: {left}"
        address = str(containers.ContainerdPaths(plan.run_dir).address)
        assert containers.shims_of(address) == {}, "container shims left behind"
        assert containers.cgroup_dirs(name) == [], "container cgroups left behind"
        with open("/proc/self/mountinfo") as fh:
            mounts = [line.split()[4] for line in fh if str(plan.run_dir) in line.split()[4]]
        assert mounts == [], f"mounts left behind: {mounts}"
        with open("/proc/net/dev") as fh:
            assert f"{name}-h0" not in fh.read(), "the lab's host link was left behind"


LOG_EVIDENCE_LINES = 80
LOG_LINE_CHARS = 400  # a traceback logged as JSON is one very long line


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test on the lab stack carries the stack's warnings and errors in its report:
    CI keeps only the output of a failed run, and the lab (with its logs) is gone after it."""
    report = yield
    if report.failed and "lab_stack" in getattr(item, "fixturenames", ()):
        stack = item.funcargs.get("lab_stack") if hasattr(item, "funcargs") else None
        logs = getattr(stack, "logs", None)
        if isinstance(logs, Path) and logs.is_dir():
            lines = []
            for path in sorted(logs.glob("*.log")):
                with contextlib.suppress(OSError):
                    for line in path.read_text(errors="replace").splitlines():
                        if any(w in line for w in ("WARNING", "ERROR", "CRITICAL", "Traceback",
                                                   '"warning"', '"error"')):
                            lines.append(f"{path.name}: {line[:LOG_LINE_CHARS]}")
            report.sections.append(("lab stack warnings and errors (last lines)",
                                    "\n".join(lines[-LOG_EVIDENCE_LINES:])))
    return report
