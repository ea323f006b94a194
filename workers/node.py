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

import contextvars
import functools
import logging
import os
import threading
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


# How long an operation on a pod's workload waits for the pod's detached start to end.
START_WAIT_S = 60.0


class Starts:
    """Workload starts a detached ``CreatePod`` left running, one thread per pod.

    A detached start runs beside the agent's tasks, outside their lock, so the pod's links
    are made while containerd starts its task (the move's WIRE overlaps its PLACE). Every
    later operation on the pod's workload (wait for readiness, start, stop, delete) first
    waits for it: a pod is never deleted under a start that would bring its container back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[threading.Thread, list[BaseException]]] = {}

    def begin(self, rt: NodeRuntime, op: ops.CreatePod) -> None:
        with self._lock:
            running = self._pending.get(op.pod)
            if running is not None and running[0].is_alive():
                return  # a retried CreatePod: its first start is still under way
            errors: list[BaseException] = []

            def start() -> None:
                try:
                    rt.start_workload(pod=op.pod, workload=op.workload, params=dict(op.params),
                                      container=op.container)
                except BaseException as exc:  # reported by the next operation on the pod
                    log.warning("pod %s: its detached start failed: %s", op.pod, exc)
                    errors.append(exc)

            # the thread carries the task's context: its log lines keep the move id
            t = threading.Thread(target=contextvars.copy_context().run, args=(start,),
                                 name=f"start-{op.pod}", daemon=True)
            self._pending[op.pod] = (t, errors)
            t.start()

    def settle(self, pod: str, *, timeout: float = START_WAIT_S) -> BaseException | None:
        """Wait for ``pod``'s detached start, if one is pending; what it raised, if it failed
        (None: no start pending, or it succeeded). One still under way after ``timeout``
        raises (retryable): nothing may act on the pod's workload before it ends."""
        with self._lock:
            entry = self._pending.get(pod)
        if entry is None:
            return None
        t, errors = entry
        t.join(timeout)
        if t.is_alive():
            raise DataplaneError(f"pod {pod}: its workload is still starting after "
                                 f"{timeout:g} s", retryable=True)
        with self._lock:
            if self._pending.get(pod) is entry:
                del self._pending[pod]
        return errors[0] if errors else None


STARTS = Starts()


def _retried(pod: str, failed: BaseException | None) -> None:
    if failed is not None:
        log.info("pod %s: its detached start failed (%s); starting it again", pod, failed)


def _create_pod(rt: NodeRuntime, op: ops.CreatePod) -> object:
    if not (op.start and op.detach):
        _retried(op.pod, STARTS.settle(op.pod))
        return rt.create_pod(pod=op.pod, workload=op.workload, params=dict(op.params),
                             start=op.start, container=op.container)
    made = rt.create_pod(pod=op.pod, workload=op.workload, params=dict(op.params),
                         start=False, container=op.container)
    STARTS.begin(rt, op)
    return made


def _start_workload(rt: NodeRuntime, op: ops.StartWorkload) -> object:
    """Idempotent: waits for a detached start and returns its workload; starts it (again)
    when that start failed or was lost (an agent restarted in the middle of it)."""
    _retried(op.pod, STARTS.settle(op.pod))
    return rt.start_workload(pod=op.pod, workload=op.workload, params=dict(op.params),
                             container=op.container)


def _wait_ready(rt: NodeRuntime, op: ops.WaitReady) -> None:
    deadline = time.monotonic() + float(op.timeout)
    failed = STARTS.settle(op.pod, timeout=float(op.timeout))
    if failed is not None:
        raise failed
    rt.wait_ready(pod=op.pod, timeout=max(0.0, deadline - time.monotonic()))


def _delete_pod(rt: NodeRuntime, op: ops.DeletePod) -> None:
    # a start still under way raises here: deleting now could leave its container behind
    failed = STARTS.settle(op.pod)
    if failed is not None:
        log.info("pod %s: deleted after its start failed: %s", op.pod, failed)
    rt.delete_pod(pod=op.pod)


def _settled(handler: Handler) -> Handler:
    """``handler`` run once the pod's detached start (if any) ended."""
    def run(rt: NodeRuntime, op: Any) -> object:
        failed = STARTS.settle(op.pod)
        if failed is not None:
            raise failed
        return handler(rt, op)

    return run


HANDLERS: Mapping[type[ops.AnyOp], Handler] = {
    ops.CreatePod: _create_pod,
    ops.StartWorkload: _start_workload,
    ops.WaitReady: _wait_ready,
    ops.DeletePod: _delete_pod,
    ops.CreateEnd: reconciling.create_end,
    ops.DeleteEnd: lambda rt, op: rt.delete_end(pod=op.pod, ifname=op.ifname),
    ops.Switch: lambda rt, op: rt.switch(pod=op.pod, ifname=op.ifname, mac=op.mac,
                                         node_ip=op.node_ip),
    ops.FdbDst: lambda rt, op: rt.fdb_dst(pod=op.pod, ifname=op.ifname, mac=op.mac),
    ops.SetRoutes: lambda rt, op: rt.set_routes(pod=op.pod,
                                                routes=[dict(r) for r in op.routes]),
    ops.Quiesce: _settled(lambda rt, op: rt.quiesce(pod=op.pod)),
    ops.Resume: _settled(lambda rt, op: rt.resume(pod=op.pod)),
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
