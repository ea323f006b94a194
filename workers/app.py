"""The Celery app. Configured when first used (``on_configure``), never at import time.

msgpack for tasks and results (never pickle); ``acks_late`` with ``reject_on_worker_lost`` so a
task whose worker dies is not lost; prefetch of one so a busy worker does not hoard phases.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_ready,
)

from mobility import keys
from mobility.logs import bind_move, configure_logging, current_move, is_move_id, unbind_move
from mobility.settings import get_settings
from mobility.store.connecting import SentinelConfig, celery_conf
from workers.routing import ORCHESTRATION

log = logging.getLogger(__name__)

REAP_EVERY_S = 2.0
# workers.canvas.RUN_PHASES (canvas imports this module): a move's phases up to its cutover
START_TASK = "move.run"
START_PRIORITY = 3  # kombu's Redis priority steps are 0, 3, 6, 9; 0 first
FINISH_PRIORITY = 0  # what finishes a move under way (its retries, a takeover, RELEASE...)
REAP_TASK = "moves.reap"
VISIBILITY_TIMEOUT_S = 3600
POLICY_TICK_S = 2.0


def configure(app: Celery, url: str, *, sentinel: SentinelConfig | None = None) -> None:
    """``url``'s broker, backend and beat schedule; through ``sentinel`` when given."""
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack"],
        result_accept_content=["msgpack"],
        event_serializer="msgpack",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=ORCHESTRATION,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        # One rule for time limits and redelivery. The threads pool enforces no Celery time
        # limit, so none is set: every phase is bounded by its own timeouts (node calls,
        # readiness, the state channel's stall timeout, the pre-copy round cap), minutes at
        # most, far below this visibility timeout; so the broker redelivers only a task whose
        # worker died unacked. A redelivered phase finds the move's lease held by the live
        # worker (it stops) or the phase done (it skips); a dead worker's move is the reaper's.
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        # task events (msgpack, as everything else) for Flower and `celery events`; senders
        # announce "task-sent" too, so a task is seen from the moment it is queued
        worker_send_task_events=True,
        task_send_sent_event=True,
        beat_schedule={
            # a tick nobody ran in time is dropped: the next one does its work
            "reap-moves": {"task": REAP_TASK, "schedule": REAP_EVERY_S,
                           "options": {"expires": 10 * REAP_EVERY_S}},
            "policies-tick": {"task": "policies.tick", "schedule": POLICY_TICK_S,
                              "options": {"expires": 10 * POLICY_TICK_S}},
            "reap-jobs": {"task": "jobs.reap", "schedule": REAP_EVERY_S,
                          "options": {"expires": 10 * REAP_EVERY_S}},
        },
        # Beat keeps its schedule in Redis (celery-redbeat), so the rebalancing cron set
        # through the API reaches the running beat without a restart.
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=url,
        redbeat_key_prefix=keys.REDBEAT_PREFIX,
        redbeat_lock_timeout=30,
        include=["workers.moves", "workers.deploying", "workers.node", "workers.clusters",
                 "workers.automation", "workers.images", "workers.notifying"],
    )
    # A move's start waits behind the work that finishes moves already under way: on Redis
    # priority 0 is served first (and a task sent without one is 0), so RELEASE, COMPLETE and
    # a compensation go ahead of queued starts. In one FIFO, 26 queued starts kept switched
    # moves' clean-up waiting past the lease handoff, and the reaper took those moves over.
    # The reaper stays in line with the starts (same priority, FIFO): a tick runs only after
    # the starts queued before it have started, and expires (20 s) before the reaper's grace
    # for a pending move (30 s), so it never takes a start still in the queue for a lost one.
    # Set as an item: update() would have the router read the configuration that is being
    # made (on_configure) again.
    app.conf["task_routes"] = {name: {"queue": ORCHESTRATION, "priority": START_PRIORITY}
                               for name in (START_TASK, REAP_TASK)}
    if sentinel is not None:  # Redis Sentinel: kombu's and Celery's sentinel:// transports
        app.conf.update(celery_conf(url, sentinel, transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S}))


class MobilityCelery(Celery):  # type: ignore[misc]
    def on_configure(self) -> None:
        configure(self, get_settings().redis_url.get_secret_value(),
                  sentinel=SentinelConfig.from_settings())


def client(url: str, *, sentinel: SentinelConfig | None = None) -> Celery:
    """A separate app bound to ``url``, for tools that send tasks by name (CLI, tests)."""
    c = Celery("service-mobility-client", set_as_current=False)
    configure(c, url, sentinel=sentinel)
    return c


app = MobilityCelery("service-mobility")


@setup_logging.connect
def _logging(**_: object) -> None:
    configure_logging()


# The move a task works for, bound around it so each of its log lines carries the move id
# (mobility.logs); tokens by task id, each reset in the thread that bound it.
_BOUND: dict[str, Any] = {}


def task_move_id(request: Any, args: Any, kwargs: Any) -> str | None:
    """A task's move: its ``move_id`` keyword, the ``move_id`` header a task sent for a move
    carries (a node operation), or a first argument that is a move id (a phase task)."""
    for candidate in ((kwargs or {}).get("move_id"), getattr(request, "move_id", None),
                      args[0] if args else None):
        if is_move_id(candidate):
            return str(candidate)
    return None


@task_prerun.connect
def _bind_move(task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None,
               **_: Any) -> None:
    move_id = task_move_id(getattr(task, "request", None), args, kwargs)
    if move_id is not None and task_id:
        _BOUND[task_id] = bind_move(move_id)


@task_postrun.connect
def _unbind_move(task_id: str = "", **_: Any) -> None:
    token = _BOUND.pop(task_id, None)
    if token is not None:
        unbind_move(token)


@before_task_publish.connect
def _carry_move(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """A task sent while working on a move (a node operation) carries the move id in a
    header, so the agent that runs it logs under the same id."""
    move_id = current_move()
    if move_id is not None and headers is not None:
        headers.setdefault("move_id", move_id)


def _index_nodes() -> None:
    """A registry from before the per-node index gets it now, so the node agents stop reading
    every service each second before the first service write would build it."""
    from mobility.store import Registry

    try:
        reg = Registry.from_url(get_settings().redis_url.get_secret_value())
        if reg.ensure_node_index():
            log.info("built the per-node index of the registry")
        reg.r.close()
    except Exception:  # the agents scan meanwhile: slower, never wrong
        log.warning("could not build the per-node index", exc_info=True)


@worker_ready.connect
def _reap_on_start(sender: Any = None, **_: Any) -> None:
    """A restarted orchestration worker first looks for moves its predecessor left behind."""
    if sender is None or os.environ.get("MOBILITY_NODE"):
        return  # a node agent: the reaper is the orchestrator's (agents may not send it)
    queues = {q.name for q in sender.app.amqp.queues.values()}
    if ORCHESTRATION in queues:
        _index_nodes()
        sender.app.send_task("moves.reap", queue=ORCHESTRATION, expires=60)
        # and once more when a killed predecessor's lease has run out, so its move is taken
        # over even while beat (the periodic reaper) is down too
        sender.app.send_task("moves.reap", queue=ORCHESTRATION, expires=60,
                             countdown=get_settings().lease_ttl_s + 1)
