"""How fast node agents repair drift: a link end deleted under a running service.

Usage: .venv/bin/python -m bench.drift [--runs 5] [--rate 1000] [--timeout 30] [--down]

Brings the lab stack up if needed, deploys an echo service and a client linked to it, and
runs :mod:`bench.echo_meter` in the client's pod: a client at ``--rate`` req/s whose counters
the bench reads at the instant of the fault (the deployed client only holds the link: its
progress file is up to 200 ms old). Each run deletes the service's VxLAN device (``nsm-1``)
in its pod, marks the meter right after (the last request sent by then) and times, from just
before the delete:

- ``device_back_ms``: until ``nsm-1`` exists again in the pod;
- ``traffic_back_ms``: until the first reply to a request sent after the delete, so no reply
  from before the fault can count.

``--runs`` runs of each of two repairs, alternating, so machine noise falls on both alike:

- ``reconciler``: the bench does nothing; the node agent's periodic reconcile finds the drift;
- ``on_demand``, the same-run baseline: right after the delete the bench asks the node's agent
  to recreate that end (``node.create_end``, the operation the reconciler runs) through the
  same broker: the repair without the wait for the next reconcile pass.

Prints one JSON object: ``runs``, ``timeouts`` (per repair), the distributions of both times
for both repairs, ``reconciler_over_on_demand`` (the ratio of the ``traffic_back_ms`` p50s),
``reconcile_period_ms`` (measured: the spacing of the agent's health records of the service)
and the meter's counts (``requests_lost`` are expected: the device is gone for a while). A run
whose device or traffic is not back within ``--timeout`` s counts in ``timeouts``, stays out
of the distributions, and makes the bench exit non-zero, as does a failed on-demand repair.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from bench import labs
from bench.children import Child, ChildError
from bench.percentiles import distribution, nearest_rank
from cli.demo import remove_demo_services, wait_probe
from cli.stack import Stack, default_stack
from dataplane.netlink import Netlink
from mobility.node_ops import CreateEnd
from mobility.store import Registry
from workers.app import client
from workers.reconciling import INTERVAL_S
from workers.routing import node_queue

log = logging.getLogger("bench.drift")

SVC, CLIENT = "demo-echo", "demo-client"
DEVICE = "nsm-1"
HOLDER_RATE = 10.0  # req/s of the deployed client, which only holds the link
MODES = ("reconciler", "on_demand")


@dataclass
class Results:
    device_ms: dict[str, list[float]] = field(
        default_factory=lambda: {m: [] for m in MODES})
    traffic_ms: dict[str, list[float]] = field(
        default_factory=lambda: {m: [] for m in MODES})
    timeouts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    repair_errors: list[str] = field(default_factory=list)


class Meter:
    """The bench's side of :mod:`bench.echo_meter` running in the client's pod."""

    def __init__(self, namespace: str, *, target: str, rate: float) -> None:
        self.child = Child(namespace, "bench.echo_meter", "--target", target,
                           "--rate", str(rate))
        self.pending: list[dict[str, Any]] = []

    def _wait_for(self, key: str, deadline: float, *, mark: int | None = None
                  ) -> dict[str, Any] | None:
        """The meter's next message carrying ``key`` (and belonging to ``mark``, if given),
        or None at the deadline; messages of other kinds are kept for their own reader."""

        def wanted(msg: dict[str, Any]) -> bool:
            return key in msg and (mark is None or msg.get("mark") == mark)

        for i, msg in enumerate(self.pending):
            if wanted(msg):
                return self.pending.pop(i)
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.child.next(left)
            except ChildError:
                if self.child.proc.poll() is not None:
                    raise
                return None
            if wanted(msg):
                return msg
            if "back_seq" not in msg:  # a late answer to an earlier mark is dropped
                self.pending.append(msg)
        return None

    def ready(self, timeout: float) -> bool:
        return self._wait_for("ready", time.monotonic() + timeout) is not None

    def mark(self) -> dict[str, Any]:
        self.child.send("mark")
        msg = self._wait_for("mark_seq", time.monotonic() + 5)
        if msg is None:
            raise ChildError("the meter did not answer a mark in 5 s")
        return msg

    def back(self, mark: int, deadline: float) -> float | None:
        """When the first reply to a request sent after ``mark`` arrived (monotonic)."""
        msg = self._wait_for("back_seq", deadline, mark=mark)
        return float(msg["back_t"]) if msg else None

    def stop(self) -> dict[str, Any]:
        try:
            self.child.send("stop")
            msg = self._wait_for("sent", time.monotonic() + 5)
            return msg or {}
        finally:
            self.child.kill()


def on_demand_op(registry: Registry) -> tuple[CreateEnd, str]:
    """The ``node.create_end`` the reconciler would run for the service's end, and the queue
    of the node its instance runs on."""
    services = registry.services()
    svc = services[SVC]
    assert svc.instance is not None
    for link in registry.links_of(svc):
        peer = services.get(link.peer_of(SVC).service)
        if peer is not None and peer.instance is not None:
            op = CreateEnd.for_link(link=link, service=SVC, instance=svc.instance,
                                    peer_instance=peer.instance, clusters=registry.clusters())
            if op.ifname == DEVICE:
                return op, node_queue(svc.instance.cluster, svc.instance.node)
    raise RuntimeError(f"{SVC} has no link end {DEVICE}")


def reconcile_period_ms(registry: Registry, *, passes: int) -> list[float]:
    """The spacing of ``passes`` successive health records the agent writes for the service
    (one per reconcile pass): the period as it runs, pass time included."""
    stamps: list[float] = []
    deadline = time.monotonic() + (passes + 2) * INTERVAL_S * 3
    while len(stamps) <= passes and time.monotonic() < deadline:
        health = registry.get_health(SVC)
        if health is not None and (not stamps or health.checked_at != stamps[-1]):
            stamps.append(health.checked_at)
        time.sleep(0.01)
    return [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]


def one_run(*, mode: str, namespace: str, meter: Meter, repair: tuple[CreateEnd, str],
            app: Celery, timeout: float, results: Results) -> None:
    """Delete the device, repair it as ``mode`` says, and record how long it took."""
    op, queue_name = repair
    # Land at a random point of the reconcile cycle (deliberate dephasing, not waiting for
    # anything): the repair time of a fault is spread over one period.
    time.sleep(random.uniform(0.0, INTERVAL_S))
    with Netlink(namespace) as nl:
        t0 = time.monotonic()
        nl.delete_link(DEVICE)
        mark = meter.mark()
        task = (app.send_task(op.TASK, args=[op.to_args()], queue=queue_name, expires=timeout)
                if mode == "on_demand" else None)
        deadline = t0 + timeout
        device_t = None
        while device_t is None and time.monotonic() < deadline:
            if nl.exists(DEVICE):
                device_t = time.monotonic()
            else:
                time.sleep(0.002)
    back_t = meter.back(int(mark["mark"]), deadline)
    if task is not None:
        try:
            answer = task.get(timeout=max(1.0, deadline - time.monotonic()))
            if not (isinstance(answer, dict) and answer.get("ok")):
                results.repair_errors.append(f"node.create_end answered {answer!r}")
        except Exception as exc:  # any failure of the baseline's call is reported, not raised
            results.repair_errors.append(f"node.create_end: {type(exc).__name__}: {exc}")
        finally:
            task.forget()
    log.info("%s: at the fault the meter had sent up to seq %s and received %s; device back "
             "in %s ms, traffic in %s ms", mode, mark["mark_seq"], mark["received"],
             None if device_t is None else round((device_t - t0) * 1000, 1),
             None if back_t is None else round((back_t - t0) * 1000, 1))
    if device_t is None or back_t is None:
        results.timeouts[mode] += 1
        log.error("%s run: %s not back within %g s", mode,
                  "the device" if device_t is None else "traffic", timeout)
        return
    results.device_ms[mode].append((device_t - t0) * 1000)
    results.traffic_ms[mode].append((back_t - t0) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each repair")
    parser.add_argument("--rate", type=float, default=1000.0, help="the meter's req/s")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds a run may take before it counts as a timeout")
    labs.add_arguments(parser)
    args = parser.parse_args()
    labs.start_logging()

    stack = default_stack()
    stack.up()
    try:
        return run(stack, runs=args.runs, rate=args.rate, timeout=args.timeout)
    finally:
        if args.down and labs.tear_down(stack):
            log.error("namespaces of lab %s are left after the teardown", stack.plan.name)


def run(stack: Stack, *, runs: int, rate: float, timeout: float) -> int:
    """The runs; prints the JSON object, returns the exit status."""
    plan = stack.plan
    registry = Registry.from_url(stack.redis_url())
    app = client(stack.redis_url())
    results = Results()
    with stack.api_client(timeout=120) as api:
        remove_demo_services(api)
        api.post("/v1/services", json={"name": SVC, "workload": "echo",
                                       "cluster": "core"}).raise_for_status()
        r = api.post("/v1/services", json={"name": CLIENT, "workload": "probe",
                                           "cluster": "core", "peers": [SVC],
                                           "params": {"rate": HOLDER_RATE}})
        r.raise_for_status()
        client_pod = r.json()["instance"]["pod"]
        progress = wait_probe(plan.run_dir / "pods" / client_pod / "io" / "progress.json",
                              received=3, timeout=10)
        namespace = plan.pod_namespace(api.get(f"/v1/services/{SVC}").json()["instance"]["pod"])
        period = reconcile_period_ms(registry, passes=4)
        repair = on_demand_op(registry)
        meter = Meter(plan.pod_namespace(client_pod), target=str(progress["target"]), rate=rate)
        try:
            if not meter.ready(10):
                raise RuntimeError("the meter got no reply in 10 s")
            for _ in range(runs):
                for mode in MODES:
                    one_run(mode=mode, namespace=namespace, meter=meter, repair=repair,
                            app=app, timeout=timeout, results=results)
        finally:
            counts = meter.stop()
        remove_demo_services(api)

    def p50(values: list[float]) -> float | None:
        return nearest_rank(values, 50) if values else None

    rec, base = p50(results.traffic_ms["reconciler"]), p50(results.traffic_ms["on_demand"])
    print(json.dumps({
        "runs": runs,
        "rate": rate,
        "timeout_s": timeout,
        "timeouts": results.timeouts,
        "repair_errors": results.repair_errors,
        **{mode: {"device_back_ms": distribution(results.device_ms[mode]),
                  "traffic_back_ms": distribution(results.traffic_ms[mode])} for mode in MODES},
        "reconciler_over_on_demand": round(rec / base, 1) if rec and base else None,
        "reconcile_period_ms": distribution(period),
        "requests_sent": counts.get("sent"),
        "requests_lost": counts.get("lost"),
        "requests_duplicated": counts.get("duplicated"),
    }))
    failed = sum(results.timeouts.values()) + len(results.repair_errors)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
