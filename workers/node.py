"""Node agent tasks: what runs on one node, consumed from ``dataplane.<cluster>.<node>``.

In the lab an agent runs inside its node's network namespace (entered with ``nsenter --net``,
which keeps the host's mount namespace so the pod namespaces it makes are visible to all).
That way every VxLAN socket it creates lives on that node's underlay, as on a real host, and
the agent needs no namespace argument for node-level work.

One task per operation class of :mod:`mobility.node_ops`, registered from :data:`HANDLERS`.
Answers are ``{"ok": True, "value": ...}`` or the error wire form of :mod:`mobility.errors`
(plus the errno): errors cross the queue as data, never as pickled exceptions.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from celery.signals import worker_ready

from dataplane.containers import Containerd
from dataplane.cri import CRI_NAMESPACE, CriPods
from dataplane.errors import DataplaneError
from dataplane.lab.pods import NodeRuntime
from dataplane.lab.topology import load_plan
from mobility import node_ops as ops
from mobility.logs import current_move
from mobility.settings import get_settings
from mobility.store import Registry
from workers import reconciling
from workers.app import app

log = logging.getLogger(__name__)

Answer = dict[str, object]
# One handler per operation class; each takes its own class (hence Any: a mapping over
# heterogeneous classes cannot say which handler takes which).
Handler = Callable[[NodeRuntime, Any], object]


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
    return NodeRuntime(plan, plan.node(cluster, node), cri=_cri())


def _cri() -> CriPods | None:
    """On a real Kubernetes node (``MOBILITY_CRI_ADDRESS``: its containerd's socket,
    ``MOBILITY_KUBELET_ROOT``: the kubelet's root directory) the pods are the kubelet's."""
    address = os.environ.get("MOBILITY_CRI_ADDRESS", "")
    root = os.environ.get("MOBILITY_KUBELET_ROOT", "")
    if not address:
        return None
    if not root:
        raise DataplaneError("node agent: MOBILITY_CRI_ADDRESS is set without "
                             "MOBILITY_KUBELET_ROOT")
    return CriPods(Containerd(address, CRI_NAMESPACE, timeout=20), Path(root))


def _failed(message: str, *, errno: int | None, retryable: bool) -> Answer:
    return {"ok": False, "kind": "federation", "error": message, "errno": errno,
            "retryable": retryable}


HANDLERS: Mapping[type[ops.AnyOp], Handler] = {
    ops.CreatePod: lambda rt, op: rt.create_pod(pod=op.pod, workload=op.workload,
                                                params=dict(op.params), start=op.start,
                                                container=op.container),
    ops.StartWorkload: lambda rt, op: rt.start_workload(pod=op.pod, workload=op.workload,
                                                        params=dict(op.params),
                                                        container=op.container),
    ops.WaitReady: lambda rt, op: rt.wait_ready(pod=op.pod, timeout=float(op.timeout)),
    ops.DeletePod: lambda rt, op: rt.delete_pod(pod=op.pod),
    ops.CreateEnd: reconciling.create_end,
    ops.DeleteEnd: lambda rt, op: rt.delete_end(pod=op.pod, ifname=op.ifname),
    ops.Switch: lambda rt, op: rt.switch(pod=op.pod, ifname=op.ifname, mac=op.mac,
                                         node_ip=op.node_ip),
    ops.FdbDst: lambda rt, op: rt.fdb_dst(pod=op.pod, ifname=op.ifname, mac=op.mac),
    ops.SetRoutes: lambda rt, op: rt.set_routes(pod=op.pod,
                                                routes=[dict(r) for r in op.routes]),
    ops.Quiesce: lambda rt, op: rt.quiesce(pod=op.pod),
    ops.Resume: lambda rt, op: rt.resume(pod=op.pod),
    ops.EnsureRelay: lambda rt, op: str(rt.ensure_relay(pod=op.pod, timeout=op.timeout)),
    ops.Ping: lambda rt, op: {"node": rt.node.queue_id, "pid": os.getpid()},
}


def _serve(cls: type[ops.AnyOp], handler: Handler) -> Callable[[Mapping[str, object]], Answer]:
    def run(args: Mapping[str, object]) -> Answer:
        try:
            op = cls.from_args(args)
            started = time.monotonic()
            with reconciling.LOCK:
                value = handler(runtime(), op)
            if current_move() is not None:  # a move's step (the header bound it): say so
                log.info("%s done for pod %s in %.1f ms", cls.TASK, getattr(op, "pod", "-"),
                         (time.monotonic() - started) * 1000)
            return {"ok": True, "value": value}
        except DataplaneError as exc:
            log.warning("%s failed: %s", cls.TASK, exc)
            return _failed(str(exc), errno=exc.errno, retryable=exc.retryable)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            log.exception("%s failed", cls.TASK)
            return _failed(f"{type(exc).__name__}: {exc}", errno=None, retryable=False)

    run.__name__ = run.__qualname__ = cls.__name__.lower()
    return run


# acks_late off: a node op is answered by its caller's timeout, never replayed later.
TASKS = {cls: app.task(name=cls.TASK, acks_late=False)(_serve(cls, handler))
         for cls, handler in HANDLERS.items()}
assert set(TASKS) == set(ops.ALL), "every node operation has a task"


@worker_ready.connect
def _start_reconciler(sender: object = None, **_: object) -> None:
    """A node agent reconciles its node from the start (not the orchestrator: no node)."""
    if not os.environ.get("MOBILITY_NODE"):
        return
    try:
        rt = runtime()
    except DataplaneError as exc:
        log.error("no reconciler: %s", exc)
        return
    reconciling.start(rt, Registry.from_url(get_settings().redis_url.get_secret_value()))
