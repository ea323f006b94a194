"""The move engine: runs one phase (or one compensation pass) of a move against the ports.

Each phase is idempotent: it reads the move record first and does nothing when the phase is
already done or the task belongs to an older epoch (the reaper took the move over). While a
phase runs, its worker holds the move's lease; if the worker dies, the lease expires and the
reaper (:meth:`Engine.reap`) either finishes the move (cutover confirmed) or rolls it back.

Why one module of over 500 lines: the phases, their compensations and the reaper read and write
the same move record under the same epoch and lease rules, and each compensation is the mirror
of one phase; keeping them side by side is what lets a reader check that every step is undone.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from redis.exceptions import RedisError

from mobility import freeze_budget, planning, workloads
from mobility.errors import (
    FederationError,
    FreezeBudgetExceeded,
    InjectedFault,
    Invalid,
    LeaseLost,
    MobilityError,
    MoveAborted,
    PhaseFailed,
    StaleEpoch,
)
from mobility.models import Event, Instance, Link, Move, MoveStatus, Phase, Service
from mobility.phases import COMPENSATIONS, compensation_plan, last_done, recovery, remaining
from mobility.ports import Federation, StateAgent, StateAgents, Wiring
from mobility.settings import Settings
from mobility.store import Registry, new_move_id
from mobility.store.acl import StateUsers
from state_transfer.errors import StateTransferError
from state_transfer.frames import new_key

log = logging.getLogger(__name__)

# Faults a move may carry when fault injection is on (tests and drills). Each strikes at the
# move's first epoch only: a move the reaper took over runs clean, as after a real crash.
# - "<phase>": that phase fails after its work is done;
# - "flaky:<phase>": that phase fails once with a retryable error (retried in place);
# - "pause:<phase>": the phase holds (and its lease) after its work, until the pause is
#   released (``Registry.release_pause``, or an abort request) or PAUSE_MAX_S pass: a test
#   kills a worker in the middle of a phase, or looks at both instances, without racing a timer;
# - "pause:switched": CUTOVER holds after switching the peers, before confirming the switch;
# - "pause:rollback": a compensation holds after its first step;
# - "undo:<phase>": that phase's compensation fails;
# - "corrupt:<phase>": the source's state agent corrupts a frame in that phase's transfer.
INJECTABLE = frozenset([str(p) for p in Phase] + [f"pause:{p}" for p in Phase]
                       + [f"flaky:{p}" for p in Phase] + [f"undo:{p}" for p in Phase]
                       + ["pause:switched", "pause:rollback", "corrupt:sync",
                          "corrupt:cutover"])
PAUSE_MAX_S = 120.0
UNDO_ATTEMPTS = 3  # tries of one compensation step within a pass
UNDO_BACKOFF_S = 0.5
COMPENSATION_BACKOFF_MAX_S = 60.0
# The compensations that make the source serve again: never given up.
SOURCE_SIDE = frozenset({Phase.CUTOVER, Phase.SYNC})
STRATEGIES = ("precopy", "stop-and-copy")
# A move waiting for its freeze to fit its budget: the pause between its extra rounds, and
# the phase hand-over assumed before a move has measured one of its own.
BUDGET_PAUSE_S = 0.25
BUDGET_HOP_DEFAULT_S = 0.05
# The freeze's fixed cost is learnt from the last OVERHEAD_SAMPLES succeeded stateful moves
# among the newest OVERHEAD_LOOKBACK moves.
OVERHEAD_SAMPLES = 9
OVERHEAD_LOOKBACK = 30


@dataclass
class Lease:
    """A held move lease; ``lost`` is set when another worker has it now. ``linger_s``: on
    exit, keep it that long (nobody takes the move over before), instead of releasing it."""

    move_id: str
    lost: threading.Event = field(default_factory=threading.Event)
    linger_s: float = 0.0

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"move {self.move_id}: lease lost; another worker runs it now")


@dataclass(frozen=True)
class Reaped:
    move_id: str
    epoch: int
    action: str  # "forward" or "rollback"
    phases: tuple[Phase, ...] = ()


class Journal:
    """Writes a move's events (both sides of moves write them, with the same time-to-live)."""

    def __init__(self, *, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.listeners: list[Callable[[Event], None]] = []

    def __call__(self, move_id: str, kind: str, *, phase: Phase | None = None,
                 detail: str = "") -> None:
        event = Event(move_id=move_id, kind=kind, ts=time.time(),
                      phase=str(phase) if phase else None, detail=detail)
        self.registry.add_event(event, ttl_s=self.settings.event_ttl_s)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener's failure is never the move's
                log.warning("move %s: a listener of %s failed", move_id, kind, exc_info=True)


class MoveRequests:
    """The API's side of moves: validate and record a move, ask for an abort.

    Needs only the registry: the API never reaches clusters or nodes itself.
    """

    def __init__(self, *, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._event = Journal(registry=registry, settings=settings)

    def request_move(self, *, service: str, to_cluster: str, faults: list[str] | None = None,
                     origin: str = "api", strategy: str = "precopy",
                     policy_id: str | None = None,
                     trigger: dict[str, Any] | None = None,
                     max_freeze_ms: float | None = None,
                     deadline_s: float | None = None) -> Move:
        """Validate and record a move, taking the service's lock. Raises NotFound/Conflict.

        ``max_freeze_ms``: the downtime budget (:mod:`mobility.freeze_budget`); SYNC waits up
        to ``deadline_s`` (default :data:`~mobility.freeze_budget.DEADLINE_S_DEFAULT`) for its
        prediction to fit, else the move rolls back before freezing. A stateless service never
        freezes: its budget is met by construction."""
        faults = list(faults or [])
        deadline_s = freeze_budget.check_request(max_freeze_ms=max_freeze_ms,
                                                 deadline_s=deadline_s, strategy=strategy)
        svc = planning.validate_move(
            service=self.registry.get_service(service), service_name=service,
            to_cluster=to_cluster, clusters=self.registry.clusters(),
        )
        assert svc.instance is not None
        if strategy not in STRATEGIES:
            raise Invalid(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        move = Move(id=new_move_id(), service=service, from_cluster=svc.instance.cluster,
                    to_cluster=to_cluster, created_at=time.time(), source=svc.instance,
                    faults=faults, origin=origin, strategy=strategy,
                    stateful=workloads.is_stateful(svc), policy_id=policy_id,
                    trigger=trigger, max_freeze_ms=max_freeze_ms, deadline_s=deadline_s)
        peers = [link.peer_of(service).service for link in self.registry.links_of(svc)]
        self.registry.create_move(move, peers=peers)
        self.registry.note_move_start(service, move.created_at)
        self._event(move.id, "status", detail="pending")
        return move

    def request_abort(self, move_id: str) -> Move:
        def ask(m: Move) -> None:
            if not m.status.terminal and not m.cutover_confirmed and not m.forward_only:
                m.abort_requested = True

        move = self.registry.update_move(move_id, ask)
        if move.abort_requested and any(f.startswith("pause:") for f in move.faults):
            self.registry.release_pause(move_id)  # a held phase ends, then the abort is seen
        return move


class Engine:
    """The worker's side: runs phases and compensations against the ports."""

    def __init__(self, *, registry: Registry, federation: Federation, wiring: Wiring,
                 state_agents: StateAgents, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._event = Journal(registry=registry, settings=settings)
        self.federation = federation
        self.wiring = wiring
        self.state_agents = state_agents
        self._tl = threading.local()  # the lease the current thread's phase holds

    def on_event(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with each event the engine journals, once it is recorded (the
        worker's move notifications: the engine cannot know Celery). What it raises is
        logged, never the move's failure."""
        self._event.listeners.append(listener)

    # --- running phases ---

    def run_phase(self, move_id: str, epoch: int, phase: Phase) -> bool:
        """Run one phase. Returns False when the chain must stop (stale, terminal)."""
        move = self.registry.get_move(move_id)
        if move.epoch != epoch or move.status.terminal or move.status == MoveStatus.ROLLING_BACK:
            log.info("move %s: skipping %s (epoch %s/%s, status %s)", move_id, phase, epoch,
                     move.epoch, move.status)
            return False
        if str(phase) in move.phases_done:
            return True
        if (move.abort_requested and not move.cutover_confirmed and not move.forward_only):
            raise MoveAborted(f"move {move_id} aborted on request before {phase}")

        def start(m: Move) -> None:
            m.status = MoveStatus.RUNNING
            m.phase = phase
            if str(phase) not in m.phases_started:
                m.phases_started.append(str(phase))

        with self.lease(move_id, epoch) as held:
            self._tl.lease = held
            try:
                move = self.registry.update_move(move_id, start, epoch=epoch)
                self._event(move_id, "phase_started", phase=phase)
                t0 = time.perf_counter()
                getattr(self, f"_{phase}")(move, epoch)
                self._hold(move, epoch, f"pause:{phase}", phase)
                if epoch == 0 and str(phase) in move.faults:
                    raise InjectedFault(f"fault injected in {phase}")
                if (epoch == 0 and f"flaky:{phase}" in move.faults
                        and self.registry.fire_once(move_id, f"flaky:{phase}")):
                    raise FederationError(f"flaky fault injected in {phase} (retryable)",
                                          retryable=True)
                ms = round((time.perf_counter() - t0) * 1000, 1)

                def end(m: Move) -> None:
                    if str(phase) not in m.phases_done:
                        m.phases_done.append(str(phase))
                    m.phase_ms[str(phase)] = ms

                held.check()  # a worker that lost the lease records nothing
                self.registry.update_move(move_id, end, epoch=epoch)
            finally:
                self._tl.lease = None
        self._event(move_id, "phase_ended", phase=phase, detail=f"{ms} ms")
        return True

    def _end_state(self, move_id: str) -> None:
        """The move's state keys expire and its state user goes (its agents are done)."""
        self.registry.expire_state(move_id, self.settings.state_ttl_s)
        try:
            StateUsers(self.registry.r).close(move_id)
        except RedisError as exc:  # the reaper's prune removes it later
            log.warning("move %s: its state user stays for now: %s", move_id, exc)

    def _check_lease(self) -> None:
        """Stop here if this worker no longer holds the move's lease (before an act that
        others must not see twice, such as switching peers)."""
        held: Lease | None = getattr(self._tl, "lease", None)
        if held is not None:
            held.check()

    def _hold(self, move: Move, epoch: int, fault: str, phase: Phase) -> None:
        """Hold here while the injected pause ``fault`` is on (first epoch only)."""
        if epoch != 0 or fault not in move.faults:
            return
        self._event(move.id, "fault_paused", phase=phase, detail=fault)
        if not self.registry.wait_pause_released(move.id, timeout=PAUSE_MAX_S):
            log.warning("move %s: %s never released", move.id, fault)

    def _admit(self, move: Move, epoch: int) -> None:
        """Record the plan: which node and pod take the new instance.

        The load counts the targets of the other moves in flight, and ties are broken by the
        move's id: moves admitted at the same moment read the same services, and by load and
        name alone they all chose one node, whose agent then ran every start in turn (50 moves
        at once: 50 targets on one node, and node calls timing out)."""
        if move.target is not None:
            return
        services = self.registry.services()
        svc = services[move.service]
        cluster = self.registry.clusters()[move.to_cluster]
        reserved = [m.target for m in self.registry.active_moves()
                    if m.target is not None and m.id != move.id]
        node = planning.choose_node(
            cluster=cluster,
            avoid=planning.peer_nodes(move.service, self.registry.links_of(svc), services),
            load=planning.node_load(services.values(), reserved=reserved),
            spread=move.id,
        )
        target = Instance(cluster=cluster.name, node=node.name,
                          pod=f"{move.service}-{self.registry.next_pod_index()}")

        def plan(m: Move) -> None:
            m.target = target

        self.registry.update_move(move.id, plan, epoch=epoch)
        move.target = target

    @staticmethod
    def _target_params(move: Move, svc: Service) -> dict[str, Any]:
        params = dict(svc.params)
        if move.stateful:
            params["restore"] = True  # start empty: the state comes over in SYNC
        if svc.workload in workloads.PAUSABLE:
            params["paused"] = True  # a client sends once its links carry its traffic
        return params

    def _place(self, move: Move, epoch: int) -> None:
        svc = self._service(move)
        target = self._target(move)
        self.federation.place(instance=target, workload=svc.workload,
                              params=self._target_params(move, svc), start=True,
                              container=svc.container)
        if not self.federation.wires_while_starting:
            self.federation.wait_ready(instance=target, timeout=self.settings.ready_timeout_s)

    def _wire(self, move: Move, epoch: int) -> None:
        """The target's link ends and routes; where the federation allows it
        (``wires_while_starting``) they are made while the target's container still starts,
        and WIRE ends once the target serves: the start and the wiring overlap.

        ``start`` (idempotent) before the wait: it waits for the start PLACE left under way,
        or starts the workload again if that start was lost (its node agent restarted)."""
        svc = self._service(move)
        target = self._target(move)
        for link, peer in self._peers(svc):
            self.wiring.create_end(link=link, service=svc.name, instance=target,
                                   peer_instance=peer)
        self.wiring.set_routes(instance=target, routes=svc.routes)
        if self.federation.wires_while_starting:
            self.federation.start(instance=target, workload=svc.workload,
                                  params=self._target_params(move, svc),
                                  container=svc.container)
            self.federation.wait_ready(instance=target, timeout=self.settings.ready_timeout_s)

    def _sync(self, move: Move, epoch: int) -> None:
        """Pre-copy rounds while each round's delta shrinks, up to the round cap; then the
        freeze predicted from them, and held to the move's downtime budget.

        Nothing for a stateless service, nor for ``stop-and-copy`` (CUTOVER copies it all).
        The orchestrator only sends commands: the state flows from the source's agent through
        the move's Redis stream to the target's agent. Each round is timed, and a second one
        always runs (a small state's is tiny): it measures the dirty rate the prediction
        needs (:mod:`mobility.freeze_budget`, :meth:`_within_budget`).
        """
        if not move.stateful or move.strategy == "stop-and-copy":
            return
        source, target = self._agents(move)
        rounds: list[freeze_budget.Round] = []
        since, total = 0, 0

        def one_round(note: str = "") -> int:
            nonlocal since, total
            rnd = len(rounds) + 1
            t0 = time.monotonic()
            sent = self._round(move, source, target, rnd=rnd, since=since,
                               corrupt="corrupt:sync" in move.faults and rnd == 1)
            sent_bytes = int(sent["bytes"])
            rounds.append(freeze_budget.Round(bytes=sent_bytes, started=t0,
                                              seconds=time.monotonic() - t0))
            since, total = int(sent["version"]), total + sent_bytes
            self._event(move.id, "precopy_round", phase=Phase.SYNC,
                        detail=f"round {rnd}: {sent['keys']} keys, {sent_bytes} bytes{note}")
            return sent_bytes

        try:
            previous: int | None = None
            while len(rounds) < self.settings.precopy_max_rounds:
                sent_bytes = one_round()
                if previous is not None and (sent_bytes <= self.settings.precopy_small_bytes
                                             or sent_bytes >= previous):
                    break
                previous = sent_bytes
            prediction = self._within_budget(move, epoch, rounds, one_round)
        finally:
            source.close()
            target.close()
        n, predicted, overhead = len(rounds), prediction.freeze_ms, prediction.overhead_ms

        def record(m: Move) -> None:
            m.sync_rounds, m.sync_since, m.state_bytes = n, since, total
            m.predicted_freeze_ms, m.freeze_overhead_ms = predicted, overhead

        self.registry.update_move(move.id, record, epoch=epoch)
        move.sync_rounds, move.sync_since, move.state_bytes = n, since, total
        move.predicted_freeze_ms = predicted

    def _within_budget(self, move: Move, epoch: int, rounds: list[freeze_budget.Round],
                       one_round: Callable[[str], int]) -> freeze_budget.Prediction:
        """The freeze predicted from the rounds so far; with ``max_freeze_ms``, kept below it.

        A prediction above the budget is not final: a quieter moment may come (the dirty rate
        is measured afresh from the last two rounds). Up to ``deadline_s``, SYNC pauses
        briefly and runs another round (which keeps the delta the next prediction starts from
        small), with the lease refreshed all along and an abort request honoured; past it,
        the move fails with :class:`FreezeBudgetExceeded` before anything froze, and rolls
        back with the source serving as it was.

        The fixed cost: a round's own (from the rounds' fit, :func:`freeze_budget.throughput`)
        plus the rest of the window (freezing, resuming the target, switching the peers), as
        recent moves measured it (:meth:`_freeze_overhead_ms`). Not the agents' sessions
        opening in SYNC: that first open makes the move's Redis user and costs several times
        the freeze window's re-open.
        """
        lag_s = self._phase_hop_s(move.id)
        overhead_ms, learnt = self._freeze_overhead_ms(move.service)

        def predict() -> freeze_budget.Prediction:
            return freeze_budget.predict(rounds, now=time.monotonic(), lag_s=lag_s,
                                         overhead_ms=overhead_ms)

        prediction, budget = predict(), move.max_freeze_ms
        against = (f"; overhead learnt from {learnt} recent move(s)" if learnt
                   else "; overhead from the settings") + (
            "" if budget is None else f" (budget {budget:g} ms)")
        self._event(move.id, "freeze_predicted", phase=Phase.SYNC,
                    detail=prediction.detail() + against)
        if budget is None or prediction.fits(budget):
            return prediction
        waited_from = time.monotonic()
        deadline = waited_from + (move.deadline_s or 0.0)
        extra = 0
        while not prediction.fits(budget):
            if time.monotonic() + BUDGET_PAUSE_S > deadline:
                self._over_budget(move, epoch, prediction, budget=budget,
                                  waited_s=time.monotonic() - waited_from)
            time.sleep(BUDGET_PAUSE_S)  # the lease's own thread refreshes it meanwhile
            self._check_lease()
            if self.registry.get_move(move.id).abort_requested:
                raise MoveAborted(f"move {move.id} aborted on request while waiting for its "
                                  f"freeze to fit {budget:g} ms")
            extra += 1
            one_round(" (waiting for the budget)")
            prediction = predict()
        self._event(move.id, "freeze_predicted", phase=Phase.SYNC,
                    detail=f"{prediction.detail()}{against}: fits after "
                           f"{time.monotonic() - waited_from:.1f} s and {extra} more round(s)")
        return prediction

    def _over_budget(self, move: Move, epoch: int, prediction: freeze_budget.Prediction, *,
                     budget: float, waited_s: float) -> NoReturn:
        """Record the prediction that missed the budget, then give the move up (it rolls
        back: nothing froze, the source serves on)."""
        predicted, overhead = prediction.freeze_ms, prediction.overhead_ms

        def record(m: Move) -> None:
            m.predicted_freeze_ms, m.freeze_overhead_ms = predicted, overhead

        self.registry.update_move(move.id, record, epoch=epoch)
        why = (f"predicted freeze {predicted:g} ms exceeds max_freeze_ms {budget:g} after "
               f"waiting {waited_s:.1f} s (deadline_s {move.deadline_s or 0:g}); "
               f"{prediction.detail()}")
        self._event(move.id, "freeze_over_budget", phase=Phase.SYNC, detail=why)
        raise FreezeBudgetExceeded(why)

    def _freeze_overhead_ms(self, service: str) -> tuple[float, int]:
        """The freeze window's fixed cost beyond its final round, and from how many moves.

        Learnt: each recent succeeded move's measured freeze less the variable part of its own
        prediction (the median of up to :data:`OVERHEAD_SAMPLES`), so the prediction follows
        this deployment's machines and load; moves of the same ``service`` first (the same
        peers to switch: a window with none is a third of one with one), topped up with other
        services' while it has fewer than three (one sample alone is too noisy);
        ``freeze_overhead_ms`` from the settings until such moves exist.
        """
        mine: list[float] = []
        others: list[float] = []
        try:
            recent = self.registry.moves(limit=OVERHEAD_LOOKBACK)
        except (RedisError, MobilityError):  # a move's record expiring under us: no history
            recent = []
        for m in recent:
            if (m.status == MoveStatus.SUCCEEDED and m.freeze_ms is not None
                    and m.predicted_freeze_ms is not None and m.freeze_overhead_ms is not None):
                variable = m.predicted_freeze_ms - m.freeze_overhead_ms
                (mine if m.service == service else others).append(
                    max(0.0, m.freeze_ms - variable))
        # a service's own few moves first, topped up with others' while it has under three
        seen = (mine if len(mine) >= 3 else mine + others)[:OVERHEAD_SAMPLES]
        if not seen:
            return self.settings.freeze_overhead_ms, 0
        return float(statistics.median(seen)), len(seen)

    def _phase_hop_s(self, move_id: str) -> float:
        """How long this move's phases took to hand over (a phase's end to the next one's
        start, the median so far): the time between SYNC's end and the freeze, while the
        application goes on writing into the final delta."""
        hops, ended = [], None
        try:
            events = self.registry.events(move_id)
        except RedisError:
            events = []
        for event in events:
            if event.kind == "phase_ended":
                ended = event.ts
            elif event.kind == "phase_started" and ended is not None:
                hops.append(max(0.0, event.ts - ended))
                ended = None
        return statistics.median(hops) if hops else BUDGET_HOP_DEFAULT_S

    def _agents(self, move: Move) -> tuple[StateAgent, StateAgent]:
        """Connections to both agents, with the move's session opened on each.

        The per-move key is made here and handed over the control channels only: it never
        sits in Redis. Opening is idempotent, so a retried phase reuses the sessions.
        """
        assert move.source is not None
        try:
            source = self.state_agents.agent(move.source)
            target = self.state_agents.agent(self._target(move))
            key = new_key()
            # the agents write through a Redis user of this move's own, limited to its
            # mob:state:<move>:* keys (never the control plane's credentials)
            redis_url = StateUsers(self.registry.r).open(
                move.id, via=self.settings.agents_redis_url)
            for agent, role in ((source, "source"), (target, "target")):
                agent.call("open", move=move.id, key=key, role=role, redis_url=redis_url,
                           stall_timeout_s=self.settings.state_stall_timeout_s)
        except (StateTransferError, RedisError) as exc:
            raise PhaseFailed(f"state agents: {exc}") from exc
        return source, target

    def _round(self, move: Move, source: StateAgent, target: StateAgent, *, rnd: int,
               since: int, corrupt: bool = False) -> dict[str, Any]:
        """One round: the source streams its changes while the target applies them."""
        restored: dict[str, Any] = {}
        failure: list[BaseException] = []

        def restore() -> None:
            try:
                restored.update(target.call("restore", move=move.id, round=rnd))
            except BaseException as exc:  # reported below, in the phase's own thread
                failure.append(exc)

        # the thread carries the caller's context: its log lines keep the move id (mobility.logs)
        t = threading.Thread(target=contextvars.copy_context().run, args=(restore,),
                             name=f"restore-{move.id}-{rnd}", daemon=True)
        t.start()
        try:
            args: dict[str, Any] = {"move": move.id, "round": rnd, "since": since}
            if corrupt:
                args["corrupt_seq"] = 2
            sent = source.call("snapshot", **args)
        except StateTransferError as exc:
            # stop waiting for the target: its agent gives the round up at its stall timeout,
            # or sooner, when the compensation removes the target
            target.close()
            t.join(timeout=5)
            raise PhaseFailed(f"state round {rnd}: source: {exc}") from exc
        t.join(timeout=self.settings.state_stall_timeout_s + 5)
        if t.is_alive():
            target.close()
            raise PhaseFailed(f"state round {rnd}: the target did not finish restoring")
        if failure:
            raise PhaseFailed(f"state round {rnd}: target: {failure[0]}") from failure[0]
        if int(restored.get("frames", -1)) != int(sent["frames"]):
            raise PhaseFailed(f"state round {rnd}: the source sent {sent['frames']} frames, "
                              f"the target applied {restored.get('frames')}")
        return sent

    def _cutover(self, move: Move, epoch: int) -> None:
        """Freeze, ship the last delta, resume the target, switch the peers, confirm.

        Idempotent by steps recorded on the move ("delta_shipped", "target_resumed",
        "switched"): run again (a retry, a takeover) it never re-ships a delta onto a target
        that may already have taken writes, and once the peers were switched the move only
        goes forward (``forward_only``), so nothing the target accepted is rolled back.
        """
        svc = self._service(move)
        target = self._target(move)
        pairs = self._peers(svc)
        frozen_at = time.perf_counter()
        pausable = svc.workload in workloads.PAUSABLE
        if move.stateful and "delta_shipped" not in move.cutover_steps:
            self._final_delta(move, epoch)
            self._step(move, epoch, "delta_shipped")
        if move.stateful and "target_resumed" not in move.cutover_steps:
            try:
                with contextlib.closing(self.state_agents.agent(target)) as agent:
                    agent.call("resume")
            except StateTransferError as exc:
                raise PhaseFailed(f"could not resume the target: {exc}") from exc
            self._step(move, epoch, "target_resumed")
        if pausable and move.source is not None and "switched" not in move.cutover_steps:
            self.federation.quiesce(instance=move.source)
        self._check_lease()  # never switch peers for a move another worker now runs
        for link, peer in pairs:  # done again on a re-run: the switch is idempotent
            self.wiring.switch(link=link, moved=svc.name, peer_instance=peer, to_instance=target)
        # the client's traffic goes to the target from now on: that is the move's cutover_ms
        switched_ms = round((time.time() - move.created_at) * 1000, 1)
        if "switched" not in move.cutover_steps or move.cutover_ms is None:
            # a stateful target may take writes from now on: rolling back would lose them
            self._step(move, epoch, "switched", forward_only=move.stateful,
                       cutover_ms=switched_ms)
        self._hold(move, epoch, "pause:switched", Phase.CUTOVER)
        if pausable:
            self.federation.resume(instance=target)
        if move.stateful and move.freeze_ms is None:
            freeze_ms = round((time.perf_counter() - frozen_at) * 1000, 2)

            def froze(m: Move) -> None:
                m.freeze_ms = freeze_ms

            self.registry.update_move(move.id, froze, epoch=epoch)
            self._event(move.id, "freeze_window", phase=Phase.CUTOVER, detail=f"{freeze_ms} ms")
        target_ip = self.registry.clusters()[target.cluster].node(target.node).underlay_ip
        for link, peer in pairs:
            now = self.wiring.points_to(link=link, moved=svc.name, peer_instance=peer)
            if now != target_ip:
                raise PhaseFailed(f"cutover not confirmed: {peer.pod} sends {svc.name}'s "
                                  f"traffic to {now}, expected {target_ip}")
        self.federation.wait_ready(instance=target, timeout=2.0)

        def serve_from_target(s: Service) -> None:
            s.instance = target

        self.registry.update_service(svc.name, serve_from_target)

        def confirm(m: Move) -> None:
            m.cutover_confirmed = True

        self.registry.update_move(move.id, confirm, epoch=epoch)
        self._event(move.id, "cutover_confirmed", phase=Phase.CUTOVER,
                    detail=f"{len(pairs)} peer(s) switched to {target.cluster}/{target.node}")

    def _step(self, move: Move, epoch: int, step: str, *, forward_only: bool = False,
              cutover_ms: float | None = None) -> None:
        """Record a CUTOVER step as done (and, from the switch on, that the move only goes
        forward; with the switch, when it happened: the first run's time is kept)."""
        def done(m: Move) -> None:
            if step not in m.cutover_steps:
                m.cutover_steps.append(step)
            m.forward_only = m.forward_only or forward_only
            if m.cutover_ms is None:
                m.cutover_ms = cutover_ms

        updated = self.registry.update_move(move.id, done, epoch=epoch)
        move.cutover_steps, move.forward_only = updated.cutover_steps, updated.forward_only
        move.cutover_ms = updated.cutover_ms

    def _final_delta(self, move: Move, epoch: int) -> None:
        """Freeze the source and ship what changed since the last round (the target resumes
        in its own step)."""
        source, target = self._agents(move)
        try:
            source.call("freeze")
            rnd = move.sync_rounds + 1
            since = move.sync_since if move.strategy == "precopy" else 0
            sent = self._round(move, source, target, rnd=rnd, since=since,
                               corrupt="corrupt:cutover" in move.faults)
        finally:
            source.close()
            target.close()
        total = move.state_bytes + int(sent["bytes"])

        def record(m: Move) -> None:
            m.sync_rounds, m.state_bytes = rnd, total

        self.registry.update_move(move.id, record, epoch=epoch)
        self._event(move.id, "final_delta", phase=Phase.CUTOVER,
                    detail=f"round {rnd}: {sent['keys']} keys, {sent['bytes']} bytes")

    def _release(self, move: Move, epoch: int) -> None:
        """The clean-up after the switch, off the client's path (its traffic is on the target
        since CUTOVER): remove the source, end the target's state session, let the move's
        state keys expire. Every step is idempotent: the reaper runs RELEASE again when its
        worker died in it, and only then does the move end ``succeeded``."""
        if move.source is not None:
            self.federation.unplace(instance=move.source)
        if move.stateful and move.target is not None:
            with contextlib.suppress(StateTransferError), contextlib.closing(
                    self.state_agents.agent(move.target)) as agent:
                agent.call("close", move=move.id)
        self._end_state(move.id)

    def complete(self, move_id: str, epoch: int) -> Move:
        """Mark the move ``succeeded``: RELEASE did all the clean-up, so nothing is left."""
        move = self.registry.get_move(move_id)
        if move.epoch != epoch or move.status.terminal:
            return move
        if str(Phase.RELEASE) not in move.phases_done:
            # never shown succeeded with its clean-up undone (a chain that lost RELEASE)
            raise PhaseFailed(f"move {move_id}: RELEASE has not ended; not completing it")
        move = self.registry.finish_move(move_id, MoveStatus.SUCCEEDED)
        self._event(move_id, "status", detail="succeeded")
        log.info("move %s succeeded in %s ms (cutover at %s ms)", move_id, move.total_ms,
                 move.cutover_ms)
        return move

    # --- compensation ---

    def compensate(self, move_id: str, epoch: int, *, error: str) -> Move:
        """Undo every started phase, newest first, then release the lock.

        Every step runs, each retried a few times, even when an earlier one failed. The move
        ends ``rolled_back`` only when all are done. Otherwise it stays ``rolling_back`` (its
        events say what is left) and the lease is held for a backoff, after which the reaper
        takes it over and runs the compensation again: a partitioned peer or a frozen source
        is retried until it serves. Only target-side clean-up may be given up, after
        ``compensation_max_passes`` passes: the move then ends ``failed``, naming what stays.

        Once the target may have served (``forward_only``, or a confirmed cutover) nothing is
        undone: the move goes forward, through the reaper.
        """
        move = self.registry.get_move(move_id)
        if move.epoch != epoch or move.status.terminal:
            return move
        if move.cutover_confirmed or move.forward_only:
            log.warning("move %s: not rolled back, the target may have served; it goes "
                        "forward (%s)", move_id, error)
            return move

        def begin(m: Move) -> None:
            m.status = MoveStatus.ROLLING_BACK
            m.error = m.error or error

        with self.lease(move_id, epoch, handoff=False) as held:
            move = self.registry.update_move(move_id, begin, epoch=epoch)
            self._event(move_id, "status", detail=f"rolling_back: {error}")
            undone: list[tuple[Phase, str, MobilityError]] = []
            for i, phase in enumerate(compensation_plan(move)):
                name = str(COMPENSATIONS[phase])
                if i == 1:
                    self._hold(move, epoch, "pause:rollback", phase)
                failure = self._undo(move, epoch, phase, name)
                if failure is None:
                    self._event(move_id, "compensated", phase=phase, detail=name)
                else:
                    log.error("move %s: compensation %s failed: %s", move_id, name, failure)
                    self._event(move_id, "compensation_failed", phase=phase,
                                detail=f"{name}: {failure}")
                    undone.append((phase, name, failure))
            held.check()
            if undone:
                return self._compensation_left(move, epoch, held, error, undone)
        final = self.registry.finish_move(move_id, MoveStatus.ROLLED_BACK)
        self._end_state(move_id)
        self._event(move_id, "status", detail="rolled_back")
        return final

    def _undo(self, move: Move, epoch: int, phase: Phase, name: str) -> MobilityError | None:
        """One compensation step, tried a few times; the last error, or None once done."""
        failure: MobilityError | None = None
        for attempt in range(UNDO_ATTEMPTS):
            try:
                if epoch == 0 and f"undo:{phase}" in move.faults:
                    raise InjectedFault(f"fault injected in {name}")
                getattr(self, f"_undo_{phase}")(move)
                return None
            except MobilityError as exc:
                failure = exc
                if attempt + 1 < UNDO_ATTEMPTS:
                    time.sleep(UNDO_BACKOFF_S * 2 ** attempt)
        return failure

    def _compensation_left(self, move: Move, epoch: int, held: Lease, error: str,
                           undone: list[tuple[Phase, str, MobilityError]]) -> Move:
        """After a pass that left steps undone: give up on target-side clean-up after enough
        passes, else wait (holding the lease for a backoff) for the reaper's next pass."""
        passes = move.compensation_passes + 1
        left = "; ".join(f"{name}: {exc}" for _, name, exc in undone)
        source_side = [p for p, _, _ in undone if p in SOURCE_SIDE]
        if not source_side and passes >= self.settings.compensation_max_passes:
            final = self.registry.finish_move(
                move.id, MoveStatus.FAILED,
                error=f"{error}; the source serves, but after {passes} passes this is left "
                      f"behind: {left}")
            self._end_state(move.id)
            self._event(move.id, "status", detail=f"failed: left behind: {left}")
            return final

        def count(m: Move) -> None:
            m.compensation_passes = passes

        updated = self.registry.update_move(move.id, count, epoch=epoch)
        held.linger_s = min(COMPENSATION_BACKOFF_MAX_S, 2.0 * 2 ** passes)
        self._event(move.id, "status",
                    detail=f"rolling_back: {len(undone)} step(s) left after pass {passes} "
                           f"({left}); retried in {held.linger_s:g} s")
        return updated

    def _undo_admit(self, move: Move) -> None:
        """release_lock: done by finish_move, which releases the lock with the move's end."""

    def _undo_place(self, move: Move) -> None:
        if move.target is not None:
            self.federation.unplace(instance=move.target)

    def _undo_wire(self, move: Move) -> None:
        if move.target is None:
            return
        svc = self._service(move)
        for link in self.registry.links_of(svc):
            self.wiring.delete_end(link=link, service=svc.name, instance=move.target)

    def _undo_sync(self, move: Move) -> None:
        """drop_state: end both agents' sessions and let the move's state keys expire."""
        if move.stateful:
            for instance in (move.source, move.target):
                if instance is None:
                    continue
                with contextlib.suppress(StateTransferError), contextlib.closing(
                        self.state_agents.agent(instance)) as agent:
                    agent.call("close", move=move.id)
        self._end_state(move.id)

    def _undo_cutover(self, move: Move) -> None:
        if move.source is None:
            return
        svc = self._service(move)
        for link, peer in self._peers(svc):
            self.wiring.switch(link=link, moved=svc.name, peer_instance=peer,
                               to_instance=move.source)
        if svc.workload in workloads.PAUSABLE:
            # a quiesced client sends again (a no-op when it was never quiesced)
            self.federation.resume(instance=move.source)
        if move.stateful:
            # unfreeze the source: it serves again, with every write it had
            try:
                with contextlib.closing(self.state_agents.agent(move.source)) as agent:
                    agent.call("resume")
            except StateTransferError as exc:
                raise PhaseFailed(f"could not unfreeze the source: {exc}") from exc
        source = move.source

        def serve_from_source(s: Service) -> None:
            s.instance = source

        self.registry.update_service(svc.name, serve_from_source)

    # --- crash recovery ---

    def reap(self, *, pending_grace_s: float = 30.0) -> list[Reaped]:
        """Take over moves whose worker vanished; the caller dispatches what is returned."""
        try:  # state users of moves that ended while their worker could not remove them
            StateUsers(self.registry.r).prune(keep=[m.id for m in self.registry.active_moves()])
        except RedisError as exc:
            log.warning("could not prune state users: %s", exc)
        taken = []
        for move in self.registry.active_moves():
            if move.status.terminal or self.registry.lease_alive(move.id):
                continue
            age = time.time() - move.created_at
            if move.status == MoveStatus.PENDING and age < pending_grace_s:
                continue  # its first task is still queued
            action = recovery(move)
            if action == "none":
                continue
            try:
                bumped = self.registry.take_over(move.id, epoch=move.epoch,
                                                 token=secrets.token_hex(8),
                                                 ttl_s=self.settings.lease_handoff_s)
            except StaleEpoch:
                continue  # someone else took it over first
            phases: tuple[Phase, ...] = ()
            if action == "forward":
                phases = tuple(remaining(last_done(bumped)))
            self._event(move.id, "reaped", detail=f"worker lost; {action} at epoch {bumped.epoch}")
            log.warning("move %s: worker lost, %s at epoch %s", move.id, action, bumped.epoch)
            taken.append(Reaped(move.id, bumped.epoch, action, phases))
        return taken

    # --- helpers ---

    @contextlib.contextmanager
    def lease(self, move_id: str, epoch: int, *, handoff: bool = True) -> Iterator[Lease]:
        """Hold the move's lease while work runs: taken only if free, handed over to this
        epoch or ours; refreshed by compare-and-set from a thread. A worker that loses it
        (stalled past its TTL and taken over, or a redelivered task racing a live one) sees
        ``Lease.lost`` and must stop before recording anything (:meth:`Lease.check`).

        On exit the lease is handed over (``handoff:<epoch>``) for the next phase's task, or
        released when ``handoff`` is False."""
        token = secrets.token_hex(8)
        ttl = self.settings.lease_ttl_s
        if not self.registry.acquire_lease(move_id, token, epoch=epoch, ttl_s=ttl):
            raise LeaseLost(f"move {move_id}: another worker holds the lease")
        held = Lease(move_id)
        stop = threading.Event()

        def refresh() -> None:
            last_ok = time.monotonic()
            while not stop.wait(ttl / 3):
                try:
                    if not self.registry.refresh_lease(move_id, token, ttl_s=ttl):
                        held.lost.set()
                        log.error("move %s: lease taken by another worker", move_id)
                        return
                    last_ok = time.monotonic()
                except Exception as exc:  # Redis unreachable: the lease may be expiring
                    log.warning("move %s: lease refresh failed: %s", move_id, exc)
                    if time.monotonic() - last_ok > ttl:
                        held.lost.set()
                        return

        t = threading.Thread(target=contextvars.copy_context().run, args=(refresh,),
                             name=f"lease-{move_id}", daemon=True)
        t.start()
        try:
            yield held
        finally:
            stop.set()
            t.join()
            with contextlib.suppress(Exception):
                if held.lost.is_set():
                    pass
                elif held.linger_s > 0:
                    self.registry.refresh_lease(move_id, token, ttl_s=held.linger_s,
                                                value=f"backoff:{epoch}")
                elif handoff:  # also after an error: a retry in place (same epoch) takes it
                    self.registry.refresh_lease(move_id, token,
                                                ttl_s=self.settings.lease_handoff_s,
                                                value=f"handoff:{epoch}")
                else:
                    self.registry.release_lease(move_id, token)

    def _service(self, move: Move) -> Service:
        svc = self.registry.get_service(move.service)
        if svc is None:
            raise PhaseFailed(f"service {move.service} vanished during the move")
        return svc

    @staticmethod
    def _target(move: Move) -> Instance:
        if move.target is None:
            raise PhaseFailed(f"move {move.id} has no target: ADMIT did not run")
        return move.target

    def _peers(self, svc: Service) -> list[tuple[Link, Instance]]:
        """Each of the service's links with the instance at its other end."""
        out = []
        for link in self.registry.links_of(svc):
            peer = self.registry.get_service(link.peer_of(svc.name).service)
            if peer is None or peer.instance is None:
                raise PhaseFailed(
                    f"peer {link.peer_of(svc.name).service} of {svc.name} is not running")
            out.append((link, peer.instance))
        return out
