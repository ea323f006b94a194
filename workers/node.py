"""Node agent tasks: what runs on one node, consumed from ``dataplane.<cluster>.<node>``.

In the lab an agent runs inside its node's network namespace (entered with ``nsenter --net``,
which keeps the host's mount namespace so the pod namespaces it makes are visible to all).
That way every VxLAN socket it creates lives on that node's underlay, as on a real host, and
the agent needs no namespace argument for node-level work.

Results are plain dicts ``{"ok": bool, "value"| "error", "errno", "retryable"}``: errors cross
the queue as data, never as pickled exceptions.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from celery.signals import worker_ready

from dataplane.errors import DataplaneError
from dataplane.lab.pods import NodeRuntime
from dataplane.lab.topology import load_plan
from mobility.registry import Registry
from mobility.settings import get_settings
from workers import reconciling
from workers.app import app

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def runtime() -> NodeRuntime:
    """This agent's node, from ``MOBILITY_NODE=<cluster>/<node>`` and the lab's plan."""
    ident = os.environ.get("MOBILITY_NODE", "")
    lab = os.environ.get("MOBILITY_LAB_NAME", "smlab")
    cluster, _, node = ident.partition("/")
    plan = load_plan(lab)
    if plan is None or not node:
        raise DataplaneError(f"node agent: lab {lab!r} is not up or MOBILITY_NODE={ident!r} "
                             "is not <cluster>/<node>")
    return NodeRuntime(plan, plan.node(cluster, node))


def _answer(fn: Callable[[NodeRuntime, dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    @functools.wraps(fn)
    def run(args: dict[str, Any]) -> dict[str, Any]:
        try:
            with reconciling.LOCK:
                return {"ok": True, "value": fn(runtime(), args)}
        except DataplaneError as exc:
            log.warning("%s failed: %s", fn.__name__, exc)
            return {"ok": False, "error": str(exc), "errno": exc.errno,
                    "retryable": exc.retryable}
        except (OSError, KeyError, ValueError) as exc:
            log.exception("%s failed", fn.__name__)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "errno": None,
                    "retryable": False}

    return run


@worker_ready.connect
def _start_reconciler(sender: Any = None, **_: Any) -> None:
    """A node agent reconciles its node from the start (not the orchestrator: no node)."""
    if not os.environ.get("MOBILITY_NODE"):
        return
    try:
        rt = runtime()
    except DataplaneError as exc:
        log.error("no reconciler: %s", exc)
        return
    reconciling.start(rt, Registry.from_url(get_settings().redis_url.get_secret_value()))


def _task(name: str) -> Callable[[Callable[[NodeRuntime, dict[str, Any]], Any]], Any]:
    def register(fn: Callable[[NodeRuntime, dict[str, Any]], Any]) -> Any:
        # acks_late off: a node op is answered by its caller's timeout, never replayed later.
        return app.task(name=f"node.{name}", acks_late=False)(_answer(fn))

    return register


@_task("create_pod")
def create_pod(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    return rt.create_pod(pod=a["pod"], workload=a["workload"], params=a["params"],
                         start=bool(a.get("start", True)))


@_task("start_workload")
def start_workload(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    return rt.start_workload(pod=a["pod"], workload=a["workload"], params=a["params"])


@_task("wait_ready")
def wait_ready(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    rt.wait_ready(pod=a["pod"], timeout=float(a["timeout"]))


@_task("delete_pod")
def delete_pod(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    rt.delete_pod(pod=a["pod"])


@_task("create_end")
def create_end(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    return rt.create_end(**a)


@_task("delete_end")
def delete_end(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    rt.delete_end(pod=a["pod"], ifname=a["ifname"])


@_task("switch")
def switch(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    rt.switch(pod=a["pod"], ifname=a["ifname"], mac=a["mac"], node_ip=a["node_ip"])


@_task("fdb_dst")
def fdb_dst(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    return rt.fdb_dst(pod=a["pod"], ifname=a["ifname"], mac=a["mac"])


@_task("set_routes")
def set_routes(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    rt.set_routes(pod=a["pod"], routes=list(a["routes"]))


@_task("quiesce")
def quiesce(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    rt.quiesce(pod=a["pod"])


@_task("resume")
def resume(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    rt.resume(pod=a["pod"])


@_task("ping")
def ping(rt: NodeRuntime, a: dict[str, Any]) -> Any:
    return {"node": rt.node.queue_id, "pid": os.getpid()}
