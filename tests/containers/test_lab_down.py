"""``mobility lab down`` after a crash: the lab's containerd killed -9 with containers running.

Aspects: ``topology.down`` (what ``mobility lab down`` runs) finds the lab's containers from
its name alone and leaves no container process, shim, overlay mount, cgroup, pod namespace or
run directory behind; a second down finds nothing to do.
"""

from __future__ import annotations

from pathlib import Path

from dataplane import containers, netlink
from dataplane.containers import Mount
from dataplane.lab import images as lab_images
from dataplane.lab import topology
from tests.conftest import unique_prefix
from tests.containers.conftest import require_containerd, start_daemon
from tests.containers.test_containerd import echo_spec


def test_lab_down_after_containerd_is_killed(reference_archives: dict[str, Path]) -> None:
    require_containerd()
    name = unique_prefix("smcd")
    run_dir = topology.RUN_ROOT / name
    pod_ns = f"{name}-pod-a"
    netlink.create_namespace(pod_ns)
    daemon = start_daemon(run_dir, name)
    try:
        daemon.client.import_archive(reference_archives[lab_images.reference_image("echo")])
        io = run_dir / "pods" / "a" / "io"
        io.mkdir(parents=True)
        pids = [daemon.client.run(echo_spec(
            pod_ns, run_dir / "pods" / "a", f"a{i}", args=("--port", str(7400 + i)),
            mounts=(Mount(io, "/run/mobility", readonly=False),), memory_bytes=64 << 20))
            for i in range(2)]
        daemon.proc.kill()  # the crash: containers and their shims go on without it
        daemon.proc.wait(5)
        assert all(Path(f"/proc/{pid}").exists() for pid in pids)
        assert daemon.left_behind() != []

        report = topology.down(name)

        assert daemon.left_behind() == [], report
        assert {item.split()[0] for item in report.containers} >= {"shim", "mount", "cgroup"}
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
                f"/proc/{pid}/status").read_text().lower()
        assert netlink.namespaces(f"{name}-") == []
        assert not run_dir.exists()
        assert containers.cgroup_dirs(name) == []
        again = topology.down(name)
        assert again.containers == [] and again.namespaces == []
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        topology.down(name)
