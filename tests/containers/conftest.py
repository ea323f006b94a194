"""Fixtures of the container tests: the reference images, a real containerd, namespaces.

Aspects: one containerd per session under a temporary run directory, in a namespace of its
own (``smct<hex>``), torn down with :func:`dataplane.containers.cleanup`, which must leave no
mount, shim, cgroup or socket behind; tests that need root, containerd, ctr or runc fail
(never skip) when those are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dataplane import containers, netlink
from dataplane.containers import Containerd, ContainerdPaths
from dataplane.lab import images as lab_images
from tests.conftest import REPO, require_root, unique_prefix

TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2")


def require_containerd() -> None:
    """Root and containerd's binaries, or a failure that says what to install."""
    require_root()
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the container tests need {', '.join(missing)} on PATH "
                    "(apt-get install containerd runc)")


@dataclass
class Daemon:
    """A containerd of the tests' own: its paths, namespace, client and process."""

    paths: ContainerdPaths
    namespace: str
    client: Containerd
    proc: subprocess.Popen[bytes]
    timings: dict[str, float] = field(default_factory=dict)

    def left_behind(self) -> list[str]:
        """What cleanup must not leave: mounts under the run dir, shims of this address,
        cgroup directories of the namespace, shim sockets."""
        left: list[str] = []
        with open("/proc/self/mountinfo") as fh:
            base = str(self.paths.base)
            left += [f"mount {line.split()[4]}" for line in fh
                     if line.split()[4].startswith(base + "/")]
        left += [f"shim {pid}" for pid in containers.shims_of(str(self.paths.address))]
        left += [f"cgroup {d}" for d in containers.cgroup_dirs(self.namespace)]
        return left


def start_daemon(run_dir: Path, namespace: str) -> Daemon:
    paths = ContainerdPaths(run_dir)
    paths.write_config()
    log = paths.log.open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(paths.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    client = paths.client(namespace)
    try:
        client.wait_up(15)
    except Exception:
        proc.kill()
        proc.wait(5)
        raise
    return Daemon(paths, namespace, client, proc,
                  {"containerd_start_s": time.monotonic() - started})


def stop_daemon(daemon: Daemon, *, keep_run_dir: bool = False) -> list[str]:
    """Clean up (stopping the daemon), then delete the run dir once nothing is left in it."""
    removed = containers.cleanup(daemon.paths, daemon.namespace, daemon_pid=daemon.proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        daemon.proc.wait(10)
    if daemon.proc.poll() is None:
        daemon.proc.kill()
        daemon.proc.wait(5)
    if not keep_run_dir and not daemon.left_behind():
        shutil.rmtree(daemon.paths.run_dir, ignore_errors=True)
    return removed


def short_tmp(tag: str) -> Path:
    """A short temporary directory: unix socket paths must stay under 108 bytes, and
    pytest's tmp paths can be long."""
    return Path(tempfile.mkdtemp(prefix=f"{tag}-", dir="/tmp"))


@pytest.fixture(scope="session")
def reference_archives() -> dict[str, Path]:
    """The reference archives of this source tree, built from the cached rootfs (the rootfs
    itself is built once per machine by scripts/base_rootfs.sh, run here if missing)."""
    require_containerd()
    try:
        lab_images.rootfs_dir()
    except lab_images.RootfsMissing:
        subprocess.run(["bash", str(REPO / "scripts" / "base_rootfs.sh")], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
        lab_images.reference_tag.cache_clear()
    return lab_images.build_reference()


@pytest.fixture(scope="session")
def daemon(reference_archives: dict[str, Path]) -> Iterator[Daemon]:
    """One containerd for the session, the reference images imported (from the bundle)."""
    d = start_daemon(short_tmp("smct"), unique_prefix("smct"))
    try:
        t = time.monotonic()
        d.client.import_archive(lab_images.bundle_path())
        d.timings["import_reference_s"] = time.monotonic() - t
        yield d
    finally:
        stop_daemon(d)
        left = d.left_behind()
        assert left == [], f"containerd cleanup left: {left}"


@dataclass(frozen=True)
class Spare:
    """A stopped containerd's run dir and namespace, the echo image already imported: a test
    that must kill or stop its daemon starts one here in 50 ms instead of importing again."""

    run_dir: Path
    namespace: str


@pytest.fixture(scope="session")
def spare(reference_archives: dict[str, Path]) -> Iterator[Spare]:
    d = start_daemon(short_tmp("smcts"), unique_prefix("smct"))
    try:
        d.client.import_archive(reference_archives[lab_images.reference_image("echo")])
    finally:
        stop_daemon(d, keep_run_dir=True)
    yield Spare(d.paths.run_dir, d.namespace)
    assert d.left_behind() == []
    shutil.rmtree(d.paths.run_dir, ignore_errors=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (loopback up), removed afterwards with whatever runs in it."""
    require_root()
    name = unique_prefix("smct")
    netlink.create_namespace(name)
    yield name
    for pid in netlink.namespace_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    netlink.delete_namespace(name)
    assert netlink.namespaces(name) == []


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tmp("smctw")
    yield path
    shutil.rmtree(path, ignore_errors=True)
