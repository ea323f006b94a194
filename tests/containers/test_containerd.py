"""The containerd adapter on a real, lab-owned containerd.

Aspects: the config keeps everything under the run dir (a second daemon runs beside the
first), with the plugins the adapter needs loaded and CRI not; the reference bundle imports
under exactly the names we built; ``mobility/echo`` runs in a namespace we made, with a
read-only and a read-write mount and an environment that never reaches a command line, and
answers UDP there; its CPU and memory limits are in its cgroup, under the namespace's name;
``run`` is idempotent and remakes a container whose task ended; ``stop`` removes task,
container, snapshot and cgroup; a ``docker save`` archive imports under the name it carries;
after ``kill -9`` of containerd, ``cleanup`` removes the shims, processes, mounts, sockets and
cgroups of that daemon only, and leaves another daemon's container running.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from dataplane import containers
from dataplane.containers import ContainerRun, Mount
from dataplane.errors import DataplaneError, NamespaceNotFound
from dataplane.lab import images as lab_images
from tests.conftest import unique_prefix
from tests.containers.conftest import (
    Daemon,
    Spare,
    require_containerd,
    short_tmp,
    start_daemon,
    stop_daemon,
)

UDP_PING = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b'ping-' + sys.argv[1].encode(), ('127.0.0.1', int(sys.argv[2])))
print(s.recvfrom(100)[0].decode())
"""


def wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def echo_spec(netns: str, work: Path, cid: str, **kw: object) -> ContainerRun:
    fields: dict[str, object] = {
        "id": cid,
        "image": lab_images.reference_image("echo"),
        "netns": f"/var/run/netns/{netns}",
        "log_path": work / f"{cid}.log",
        "files_dir": work / "files",
        "args": ("--port", "7000", "--ready-file", "/work/ready"),
    }
    fields.update(kw)
    return ContainerRun(**fields)  # type: ignore[arg-type]


def test_config_isolated_and_a_second_daemon_runs_beside(daemon: Daemon) -> None:
    text = daemon.paths.config.read_text()
    assert '"io.containerd.grpc.v1.cri"' in text
    for value in (daemon.paths.root, daemon.paths.state, daemon.paths.address,
                  daemon.paths.ttrpc_address):
        assert f'"{value}"' in text
    plugins = daemon.client._ctr("plugins", "ls").stdout
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in plugins.splitlines()[1:]}
    for needed in (("io.containerd.snapshotter.v1", "overlayfs"),
                   ("io.containerd.runtime.v2", "task"),
                   ("io.containerd.service.v1", "tasks-service"),
                   ("io.containerd.grpc.v1", "tasks")):
        assert rows.get(needed) == "ok", f"plugin {needed} not loaded: {plugins}"
    assert not any(key[1] == "cri" for key in rows), plugins

    second = start_daemon(short_tmp("smct2"), unique_prefix("smct"))
    try:
        assert second.paths.address != daemon.paths.address
        second.client.wait_up(5)
        daemon.client.wait_up(5)
        assert second.client.containers() == []
    finally:
        stop_daemon(second)
    assert second.proc.returncode is not None
    assert second.left_behind() == []


def test_reference_images_imported_under_our_names(daemon: Daemon,
                                                   reference_archives: dict[str, Path]) -> None:
    tag = lab_images.reference_tag()
    names = {i.name: i for i in daemon.client.images()}
    for image in (lab_images.BASE_IMAGE, *lab_images.REFERENCE):
        info = names[f"{image}:{tag}"]
        assert info.digest.startswith("sha256:")
        assert info.size > 50 << 20
    assert daemon.client.has_image(lab_images.reference_image("dataplane.lab.workloads.echo"))
    # Every image shares the rootfs and SDK layer blobs: one committed snapshot chain.
    committed = [k for k, kind in daemon.client.snapshots() if kind == "Committed"]
    assert len(committed) == 3, committed  # rootfs, sdk, workloads


def test_echo_serves_in_its_namespace_with_limits(daemon: Daemon, netns: str,
                                                  workdir: Path) -> None:
    client = daemon.client
    ro = workdir / "ro"
    ro.mkdir()
    (ro / "config.txt").write_text("read only\n")
    rw = workdir / "rw"
    rw.mkdir()
    secret = os.urandom(8).hex()
    spec = echo_spec(netns, workdir, "echo1",
                     mounts=(Mount(ro, "/config"), Mount(rw, "/work", readonly=False)),
                     env={"SMCT_SECRET": secret, "PYTHONUNBUFFERED": "1"},
                     cpus=0.5, memory_bytes=96 << 20, cwd="/work")
    pid = client.run(spec)
    try:
        wait_for(rw / "ready")
        assert client.task_pid("echo1") == pid
        assert "echo1" in client.containers()
        # Its network namespace is ours.
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(
            f"/var/run/netns/{netns}").st_ino
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", UDP_PING,
                              "x1", "7000"], capture_output=True, text=True, timeout=10,
                             check=True)
        assert out.stdout.strip() == "ping-x1"
        # The environment reached the process, through no command line and no file left.
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"SMCT_SECRET={secret}".encode() in environ
        assert b"PYTHONDONTWRITEBYTECODE=1" in environ  # the image's own
        assert not list((workdir / "files").glob("*.env"))
        for proc_dir in Path("/proc").iterdir():
            if proc_dir.name.isdigit():
                try:
                    assert secret.encode() not in (proc_dir / "cmdline").read_bytes()
                except OSError:
                    continue
        assert Path(f"/proc/{pid}/cwd").resolve() == Path(f"/proc/{pid}/root/work").resolve()
        # Mounts: read-only is read-only, read-write is written through.
        assert (Path(f"/proc/{pid}/root/config/config.txt").read_text() == "read only\n")
        with pytest.raises(OSError) as err:
            Path(f"/proc/{pid}/root/config/new").write_text("x")
        assert err.value.errno == errno.EROFS
        # Limits, in cgroups named after the namespace.
        cgroups = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        memory = next(line for line in cgroups if ":memory:" in line).split(":", 2)[2]
        assert memory == f"/{daemon.namespace}/echo1"
        mem = Path("/sys/fs/cgroup/memory") / memory.lstrip("/")
        assert int((mem / "memory.limit_in_bytes").read_text()) == 96 << 20
        cpu_path = next(line for line in cgroups if ":cpu:" in line or ":cpu,"
                        in line).split(":", 2)[2]
        cpu_dir = next(Path("/sys/fs/cgroup").glob("cpu*")) if not Path(
            "/sys/fs/cgroup/cpu").is_dir() else Path("/sys/fs/cgroup/cpu")
        cpu = cpu_dir / cpu_path.lstrip("/")
        quota = int((cpu / "cpu.cfs_quota_us").read_text())
        period = int((cpu / "cpu.cfs_period_us").read_text())
        assert quota == period // 2
        assert any(str(d).endswith(f"/{daemon.namespace}")
                   for d in containers.cgroup_dirs(daemon.namespace))
        # Idempotent: the running container is kept.
        assert client.run(spec) == pid
    finally:
        client.stop("echo1", grace=3)
    assert client.task_pid("echo1") is None
    assert "echo1" not in client.containers()
    assert "echo1" not in [k for k, _ in client.snapshots()]
    assert not mem.exists()
    client.stop("echo1", grace=1)  # absent: not an error


def test_image_entrypoint_logs_and_rerun_after_exit(daemon: Daemon, netns: str,
                                                    workdir: Path) -> None:
    client = daemon.client
    spec = echo_spec(netns, workdir, "help1", args=("--help",))
    first = client.run(spec)
    deadline = time.monotonic() + 10
    while client.task_pid("help1") is not None:
        assert time.monotonic() < deadline, "echo --help did not end"
        time.sleep(0.05)
    assert "usage:" in spec.log_path.read_text()
    assert client.tasks()["help1"][1] == "STOPPED"
    # The container exists without a running task: run() makes it again.
    second = client.run(spec)
    assert second != first
    client.stop("help1", grace=1)
    assert "help1" not in client.containers()
    # A whole argv (no entry point) works too.
    argv_spec = echo_spec(netns, workdir, "argv1", args=(),
                          argv=("python3", "-c", "print('hello from argv')"))
    client.run(argv_spec)
    deadline = time.monotonic() + 10
    while "hello from argv" not in argv_spec.log_path.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.stop("argv1", grace=1)


def test_run_refuses_bad_input_and_leaves_nothing(daemon: Daemon, netns: str,
                                                  workdir: Path) -> None:
    client = daemon.client
    with pytest.raises(NamespaceNotFound):
        client.run(echo_spec("smct-none", workdir, "bad1"))
    with pytest.raises(ValueError, match="newline"):
        client.run(echo_spec(netns, workdir, "bad2", env={"A": "x\ny"}))
    with pytest.raises(DataplaneError) as err:
        client.run(echo_spec(netns, workdir, "bad3", image="mobility/nope:1", args=(),
                             argv=("true",)))
    assert err.value.errno == errno.ENOENT
    assert "bad3" not in client.containers()
    assert "bad3" not in [k for k, _ in client.snapshots()]


def _docker_save(path: Path, repo_tags: list[str]) -> None:
    """A minimal ``docker save`` archive: manifest.json, a config, one layer."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = b"from a docker save archive\n"
        info = tarfile.TarInfo("etc/docker-save.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    layer_hex = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/true"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [f"sha256:{layer_hex}"]}}).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": repo_tags,
                            "Layers": [f"{layer_hex}/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, blob in ((f"{config_hex}.json", config), (f"{layer_hex}/layer.tar", layer_bytes),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_docker_save_archive_keeps_its_names(daemon: Daemon, workdir: Path) -> None:
    client = daemon.client
    archive = workdir / "docker.tar"
    _docker_save(archive, ["mobility/tiny:t1", "mobility/tiny2"])
    names = client.import_archive(archive)
    assert names == ["mobility/tiny:t1", "mobility/tiny2:latest"]
    listed = client.image_names()
    assert "mobility/tiny:t1" in listed and "mobility/tiny2:latest" in listed
    assert not [n for n in listed if n.startswith("docker.io/")]
    for name in names:
        client.remove_image(name)
        client.remove_image(name)  # idempotent
        assert not client.has_image(name)


def test_bad_archives_are_refused(daemon: Daemon, workdir: Path) -> None:
    bad = workdir / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataplaneError, match=r"\.\."):
        daemon.client.import_archive(bad)


def test_run_timing(daemon: Daemon, netns: str, workdir: Path) -> None:
    """Not asserted (a timing is reported, never asserted): printed for the record."""
    client = daemon.client
    runs, stops = [], []
    for i in range(10):
        spec = echo_spec(netns, workdir, f"time{i}", args=("--port", str(7100 + i)),
                         cpus=1.0, memory_bytes=128 << 20)
        t = time.monotonic()
        client.run(spec)
        runs.append(time.monotonic() - t)
    for i in range(10):
        t = time.monotonic()
        client.stop(f"time{i}", grace=3)
        stops.append(time.monotonic() - t)
    print(json.dumps({"run_p50_ms": round(statistics.median(runs) * 1000, 1),
                      "stop_p50_ms": round(statistics.median(stops) * 1000, 1),
                      **{k: round(v, 3) for k, v in daemon.timings.items()}}))
    assert [c for c in client.containers() if c.startswith("time")] == []


def test_cleanup_after_containerd_is_killed(daemon: Daemon, netns: str, workdir: Path,
                                            spare: Spare) -> None:
    require_containerd()
    client = daemon.client
    # A container of the session's daemon, which the other daemon's cleanup must not touch.
    bystander = client.run(echo_spec(netns, workdir, "bystander",
                                     args=("--port", "7200")))
    crashed = start_daemon(spare.run_dir, spare.namespace)
    try:
        rw = workdir / "crash"
        rw.mkdir()
        pids = [crashed.client.run(echo_spec(
            netns, workdir, f"crash{i}", args=("--port", str(7300 + i)),
            mounts=(Mount(rw, "/work", readonly=False),), memory_bytes=64 << 20))
            for i in range(2)]
        shims = containers.shims_of(str(crashed.paths.address))
        assert len(shims) == 2
        crashed.proc.kill()
        crashed.proc.wait(5)
        assert all(Path(f"/proc/{pid}").exists() for pid in pids + list(shims))
        assert crashed.left_behind() != []

        removed = containers.cleanup(crashed.paths, crashed.namespace,
                                     daemon_pid=crashed.proc.pid)
        kinds = {item.split()[0] for item in removed}
        assert {"shim", "mount", "cgroup"} <= kinds, removed
        assert crashed.left_behind() == []
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
                f"/proc/{pid}/status").read_text().lower()
        for cid in ("crash0", "crash1"):
            assert not containers.shim_socket(str(crashed.paths.address), crashed.namespace,
                                              cid).exists()
        # Idempotent, and the other daemon's container still runs.
        containers.cleanup(crashed.paths, crashed.namespace, daemon_pid=None)
        assert client.task_pid("bystander") == bystander
    finally:
        stop_daemon(crashed, keep_run_dir=True)  # a second cleanup: nothing to do
        client.stop("bystander", grace=2)


def test_cleanup_with_the_daemon_up(netns: str, workdir: Path, spare: Spare) -> None:
    """What ``lab down`` does on a healthy lab: containers stopped through ctr, then the
    daemon; nothing of either left; the daemon starts again on the same root, images kept."""
    require_containerd()
    other = start_daemon(spare.run_dir, spare.namespace)
    try:
        assert other.client.has_image(lab_images.reference_image("echo"))
        pid = other.client.run(echo_spec(netns, workdir, "live0", args=("--port", "7400")))
        removed = containers.cleanup(other.paths, other.namespace, daemon_pid=other.proc.pid)
        assert "container live0" in removed
        assert f"containerd pid {other.proc.pid}" in removed
        assert other.proc.wait(5) is not None
        assert not Path(f"/proc/{pid}").exists()
        assert other.left_behind() == []
        assert not containers.shim_socket(str(other.paths.address), other.namespace,
                                          "live0").exists()
    finally:
        stop_daemon(other, keep_run_dir=True)
