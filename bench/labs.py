"""What the lab benches share: logging to stderr, the end-of-run teardown, and waiting on a
client's counters.

A bench's stdout carries its one JSON object and nothing else; everything else goes through
logging to stderr. A bench brings the lab stack up if needed and leaves it up for the next
run unless asked (``--down``) to remove it, which then checks that none of its namespaces is
left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cli.stack import Stack
from dataplane.lab import topology
from mobility.logs import configure_logging
from mobility.settings import DEFAULT_ENV_FILE

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--down", action="store_true",
                        help="remove the lab and its processes at the end of the run")


def start_logging() -> None:
    configure_logging(os.environ.get("MOBILITY_LOG_LEVEL", "INFO"))
    # one line per HTTP request would drown the bench's own messages
    logging.getLogger("httpx").setLevel(logging.WARNING)


def tear_down(stack: Stack) -> list[str]:
    """Remove the stack's lab (processes, namespaces, host link) and its env file; returns
    the namespaces still left (empty after a clean teardown)."""
    name = stack.plan.name
    report = topology.down(name)
    env_file = Path(os.environ.get("MOBILITY_ENV_FILE", DEFAULT_ENV_FILE))
    if env_file.is_file() and f"MOBILITY_LAB_NAME={name}\n" in env_file.read_text():
        env_file.unlink()
    left = topology.namespaces_left(name)
    log.info("lab %s down: %d namespaces, %d processes removed, %d namespaces left", name,
             len(report.namespaces), len(report.processes), len(left))
    return left


def read_counters(path: Path) -> dict[str, Any]:
    """The last counters a lab client wrote (empty before its first write)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def wait_counter(path: Path, *, key: str, at_least: int, timeout: float) -> bool:
    """Poll a client's progress file until ``key`` reaches ``at_least`` (deadline loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(read_counters(path).get(key, 0)) >= at_least:
            return True
        time.sleep(0.05)
    return False


def celery_roundtrip_ms(redis_url: str, n: int = 30) -> list[float]:
    """``n`` round trips of the orchestrator's no-op task through the broker at
    ``redis_url``, in ms: the floor under each Celery hop of a move, measured in the run."""
    from workers.app import client

    app = client(redis_url)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = app.send_task("orchestrator.ping", queue="orchestration", expires=30)
        res.get(timeout=10)
        samples.append((time.perf_counter() - t0) * 1000)
        res.forget()
    return samples


def container_start_ms(stack: Stack, n: int = 10) -> dict[str, list[float]]:
    """``n`` starts of the echo reference container in a scratch namespace of the lab, in
    ms: until ``run`` returns (containerd made and started it) and until the workload wrote
    its ready file (it serves). The floor under a move's PLACE, measured in the run."""
    import shutil
    import subprocess

    from dataplane.containers import ContainerdPaths, ContainerRun, Mount
    from dataplane.lab import images
    from dataplane.lab.pods import workload_argv

    ns = f"{stack.plan.name}-cstart"
    work = stack.run_dir / "bench-cstart"
    ctr = ContainerdPaths(stack.run_dir).client(stack.plan.name)
    image = images.reference_image("echo")
    run_ms, ready_ms = [], []
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for i in range(n):
            cid = f"bench-cstart-{i}"
            io = work / cid / "io"
            io.mkdir(parents=True, exist_ok=True)
            spec = ContainerRun(id=cid, image=image, netns=f"/var/run/netns/{ns}",
                                log_path=work / cid / "log", files_dir=work / cid,
                                argv=tuple(workload_argv("echo", {"port": 7000 + i})),
                                mounts=(Mount(src=io, dst="/run/mobility", readonly=False),))
            t0 = time.perf_counter()
            ctr.run(spec)
            run_ms.append((time.perf_counter() - t0) * 1000)
            while not (io / "ready").exists():
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError("the echo container did not get ready in 30 s")
                time.sleep(0.001)
            ready_ms.append((time.perf_counter() - t0) * 1000)
            ctr.stop(cid, grace=3)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return {"run": run_ms, "ready": ready_ms}
