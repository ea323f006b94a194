"""``GET /metrics``: Prometheus' text format, for a ``viewer`` token like every other read.

Two sources. What the whole system did (moves by status and origin, phase durations, freeze
windows, state bytes, pre-copy rounds, reconciler repairs, probe reports, queue depths) lives
in Redis, written by whichever process saw it (:mod:`mobility.store.metrics`); a custom
collector reads it in one pipeline per scrape, so a scrape costs the same with 10 services or
10,000 and never scans the moves. What this API process did (request latency) is an ordinary
in-process histogram, fed by :class:`RequestTimer`, labelled by the route's *template*
(``/v1/services/{name}``), never the raw path, so a caller cannot grow the label set.

Each app has its own :class:`CollectorRegistry` (not prometheus-client's global one): two apps
in one process (the tests) never share or clash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import cast

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mobility.store import Registry
from mobility.store import metrics as stored
from workers.routing import ORCHESTRATION, node_queue

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])

QUEUES_TTL_S = 10.0  # how long the list of node queues is reused (clusters change rarely)
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0)
UNMATCHED = "unmatched"  # the route label of a request no route took (a 404)
# a label per method a client may send would let anyone grow the histogram without bound
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def _go(value: float) -> str:
    """A bucket bound as Prometheus writes it (``1.0``, ``0.005``, ``+Inf``)."""
    return repr(float(value))  # as prometheus-client's own (Go's): 1.0, 0.005, 300.0


def _seconds(hist: stored.Histogram, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """A stored histogram's cumulative buckets, with millisecond bounds turned to seconds."""
    return [(le if le == stored.INF else _go(float(le) / 1000), float(n))
            for le, n in hist.cumulative(bounds)]


class RedisCollector(Collector):
    """The system-wide families, from ``mob:metrics:*`` and the queues' lengths."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = stored.MetricStore(registry.r)
        self._queues: tuple[float, list[str]] = (0.0, [])

    def queues(self) -> list[str]:
        """The orchestration queue and every node's queue (from the clusters, cached)."""
        at, names = self._queues
        if time.monotonic() - at > QUEUES_TTL_S or not names:
            nodes = sorted(node_queue(c.name, n.name)
                           for c in self.registry.clusters().values() for n in c.nodes)
            names = [ORCHESTRATION, *nodes]
            self._queues = (time.monotonic(), names)
        return names

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.store.snapshot(self.queues(), prioritised=(ORCHESTRATION,))
        except RedisError as exc:  # a scrape says so instead of failing as a 500
            log.warning("metrics: Redis unreachable: %s", exc)
            up = GaugeMetricFamily("mobility_registry_up", "Whether Redis answered this scrape")
            up.add_metric([], 0.0)
            yield up
            return
        up = GaugeMetricFamily("mobility_registry_up", "Whether Redis answered this scrape")
        up.add_metric([], 1.0)
        yield up
        moves = CounterMetricFamily("mobility_moves", "Moves ended, by final status and by "
                                    "what started them (api, policy, rebalance...)",
                                    labels=["status", "origin"])
        for (status, origin), n in sorted(snap.moves.items()):
            moves.add_metric([status, origin], float(n))
        yield moves
        in_flight = GaugeMetricFamily("mobility_moves_in_flight", "Moves not yet ended")
        in_flight.add_metric([], float(snap.active_moves))
        yield in_flight
        services = GaugeMetricFamily("mobility_services", "Services registered")
        services.add_metric([], float(snap.services))
        yield services
        phases = HistogramMetricFamily("mobility_move_phase_duration_seconds",
                                       "How long each phase of the moves that ended took",
                                       labels=["phase"])
        for phase, hist in snap.phases.items():
            phases.add_metric([phase], _seconds(hist, stored.PHASE_BUCKETS_MS),
                              sum_value=hist.sum / 1000)
        yield phases
        freeze = HistogramMetricFamily("mobility_move_freeze_window_seconds",
                                       "How long a stateful move's source stood frozen at "
                                       "cutover (the clients' wait)")
        freeze.add_metric([], _seconds(snap.freeze, stored.FREEZE_BUCKETS_MS),
                          sum_value=snap.freeze.sum / 1000)
        yield freeze
        state = CounterMetricFamily("mobility_state_bytes_moved",
                                    "Bytes of application state the ended moves shipped")
        state.add_metric([], float(snap.state_bytes))
        yield state
        rounds = CounterMetricFamily("mobility_precopy_rounds",
                                     "Pre-copy rounds the ended moves ran before cutover")
        rounds.add_metric([], float(snap.sync_rounds))
        yield rounds
        repairs = CounterMetricFamily("mobility_reconciler_repairs",
                                      "Link ends a node's reconciler found drifted: recreated "
                                      "(repaired) or still wrong after trying (broken)",
                                      labels=["node", "outcome"])
        for (node, outcome), n in sorted(snap.repairs.items()):
            repairs.add_metric([node, outcome], float(n))
        yield repairs
        probes = CounterMetricFamily("mobility_probe_requests",
                                     "Requests a probe sent during moves, as reported to "
                                     "the registry (sent, lost, duplicated)",
                                     labels=["result"])
        for result in ("sent", "lost", "duplicated"):
            probes.add_metric([result], float(snap.probes.get(result, 0)))
        yield probes
        depth = GaugeMetricFamily("mobility_queue_depth",
                                  "Tasks waiting in each Celery queue (its list's length)",
                                  labels=["queue"])
        for queue, n in snap.queues.items():
            depth.add_metric([queue], float(n))
        yield depth


class RequestTimer:
    """Pure ASGI middleware timing each HTTP request into ``histogram``, by method, route
    template and status code (streams: until the response starts)."""

    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = ["500"]
        observed = [False]

        def observe() -> None:
            if observed[0]:
                return
            observed[0] = True
            route = scope.get("route")
            template = str(getattr(route, "path", UNMATCHED))
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.histogram.labels(method, template, code[0]).observe(
                time.perf_counter() - start)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                code[0] = str(message["status"])
                observe()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            observe()


def install(app: FastAPI, registry: Registry) -> None:
    """This app's collector registry, its request timer, and ``GET /metrics``."""
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(RedisCollector(registry))
    latency = Histogram("mobility_api_request_duration_seconds",
                        "API request latency, by method, route template and status",
                        ["method", "route", "code"], buckets=LATENCY_BUCKETS_S,
                        registry=metrics)
    app.state.metrics = metrics
    app.add_middleware(RequestTimer, histogram=latency)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                             "description": "Prometheus' text exposition format"}})
def scrape(request: Request) -> Response:
    metrics = cast(CollectorRegistry, request.app.state.metrics)
    return Response(content=generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)
