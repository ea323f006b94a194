"""The fault matrix: stack components killed at every phase boundary and mid-SYNC, Redis
restarted and the target cluster cut off mid-move, and what each move ended as.

Usage: .venv/bin/python -m bench.faults [--only ROW[,ROW]] [--list] [--logs-to DIR] [--down]

Rows (cells), ``<component>@<point>``:

- components: ``orchestrator`` (the orchestration worker), ``source-agent`` and
  ``target-agent`` (the node agents of the move's source and target instance's nodes), ``api``,
  ``beat``; each is ended with SIGKILL by the PID the stack recorded for it;
- points: ``admit``, ``place``, ``wire``, ``sync``, ``cutover``, ``release`` (the move carries
  ``pause:<phase>``: the phase holds after its work; the component is killed, then the pause
  released), ``switched`` (``pause:switched``: CUTOVER holds after switching the peers, before
  confirming), and ``midsync``: a stateful move of the session service (``sessions``,
  ``state_mb=64``) under its ``session-probe`` client, the component killed while SYNC
  streams state (the move's frame stream exists), with no pause;
- ``wan-cut``: the move held after ADMIT, the target cluster's router ports set down in the
  lab's WAN router namespace, the pause released, the ports set up again 10 s after the cut;
- ``redis-restart``: the move held after WIRE, Redis killed (SIGKILL); once the supervisor
  has it back (append-only file on: the registry survives), the pause is released.

Nothing killed is restarted by hand: the supervisor must (``back_s``; not back within 60 s
fails the cell). Stateless cells move an ``echo`` service core -> edge under a ``probe``
client at 1,000 req/s; each cell deploys its own pair and removes it at its end.

Each row records the move's end (``status``: only ``succeeded`` and ``rolled_back`` are ok),
``seconds`` (move created to ended) and ``over_baseline`` (over the fault-free move of the same
kind in this run), ``requests_lost`` (the probe's ``lost`` from its ``probe.json`` once
removed; the session client's ``lost`` and ``counters_ok``), and ``orphans``: pod namespaces
and workload processes no service's instance owns, stack roles not alive or duplicated, a
lease of an ended move, a ``mob:jobs`` entry, a service lock no move in flight holds,
``mob:state:<move>:*`` keys past the state TTL (the stack runs with MOBILITY_STATE_TTL_S=2 and
fault injection on). See :mod:`bench.orphans`. Each orphan is counted once, in the row that
found it first.

Prints one JSON object: ``rows``, ``cells``, ``cells_ok``, ``requests_lost_total``,
``orphans_total``, ``failed`` (the rows that are not clean), ``baseline`` (fault-free moves:
their time) and ``wall_s``. Exits non-zero when a cell is not ok, a request was lost or an
orphan was found.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from bench import labs, orphans
from cli import supervise
from cli.stack import Stack, StackError, default_stack, reap_children
from dataplane.lab import topology
from mobility import keys
from mobility.models import Move, Phase
from mobility.store import Registry
from workers.app import client as celery_client
from workers.routing import ORCHESTRATION, node_queue

log = logging.getLogger("bench.faults")

T = TypeVar("T")

COMPONENTS = ("orchestrator", "source-agent", "target-agent", "api", "beat")
BOUNDARIES = ("admit", "place", "wire", "sync", "cutover", "switched", "release")
MIDSYNC = "midsync"
POINTS = (*BOUNDARIES, MIDSYNC)
OK_STATUSES = ("succeeded", "rolled_back")
STATE_TTL_S = 2
STATE_MB = 64.0
DIRTY_RATE = 1.0  # percent of the session state's keys rewritten per second
RATE = 1000.0
WARM = 250  # replies a client gets before its move, and again after it
BACK_WITHIN_S = 60.0  # a killed role must answer again within this to pass
RECOVER_WITHIN_S = 360.0  # how long a cell waits for one that did not (the next starts clean)
UNDERLAY_WAIT_S = 40 * 60.0  # for another lab to free the underlay, when one took it
PAUSE_WITHIN_S = 60.0
END_WITHIN_S = 240.0
WAN_CUT_S = 10.0
FROM, TO = "core", "edge"
LOG_LINES = 12


@dataclass(frozen=True)
class Cell:
    name: str
    kind: str  # "kill", "wan", "redis", or "none" (a baseline)
    point: str  # a boundary, "midsync", or "none"
    component: str | None = None
    stateful: bool = False

    @property
    def pause(self) -> str | None:
        """The pause fault the move carries (None: the move runs without one)."""
        return f"pause:{self.point}" if self.point in BOUNDARIES else None

    def describe(self) -> str:
        if self.kind == "kill":
            where = ("while SYNC streams state" if self.point == MIDSYNC
                     else f"held by {self.pause}")
            return f"kill -9 {self.component}, {where}"
        if self.kind == "wan":
            return f"target cluster cut off at the WAN router for {WAN_CUT_S:g} s, {self.pause}"
        if self.kind == "redis":
            return f"kill -9 redis (the supervisor restarts it), {self.pause}"
        return "no fault"


MATRIX: tuple[Cell, ...] = (
    *(Cell(f"{c}@{p}", "kill", p, c, stateful=p == MIDSYNC) for p in POINTS for c in COMPONENTS),
    Cell("wan-cut", "wan", "admit"),
    Cell("redis-restart", "redis", "wire"),
)
BASELINES = (Cell("baseline", "none", "none"),
             Cell("baseline-stateful", "none", "none", stateful=True))


class CellError(RuntimeError):
    """A cell could not go on (a deploy refused, a move never reached its pause...)."""


@dataclass
class Pair:
    """A service and the client that sends to it, deployed for one cell."""

    service: str
    client: str
    pod_dir: Path
    counter: str  # the client's progress counter: "received" (probe) or "answered" (sessions)

    @property
    def progress(self) -> Path:
        return self.pod_dir / "progress.json"


@dataclass
class Watch:
    """What the bench saw of a move and of a killed role after the fault: when a new process
    was recorded for the role (``process_s``) and when it answered (``back_s``)."""

    move: Move | None = None
    back_s: float | None = None
    back_pid: int | None = None
    process_s: float | None = None
    ticks_at: int | None = None  # beat: the policy ticks counted when its new process came


def select(only: str | None) -> list[Cell]:
    if not only:
        return list(MATRIX)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(fnmatch.fnmatchcase(c.name, w) for c in MATRIX)]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows: {', '.join(c.name for c in MATRIX)}")
    return [c for c in MATRIX if any(fnmatch.fnmatchcase(c.name, w) for w in wanted)]


def fault_stack() -> Stack:
    """The stack `mobility` manages (its lab named by the settings), with fault injection on
    and a short state TTL, so a cell can check the state keys have gone."""
    stack = default_stack()
    stack.fault_injection = True
    stack.extra_env = {**stack.extra_env, "MOBILITY_STATE_TTL_S": str(STATE_TTL_S)}
    return stack


def check_running_stack(stack: Stack) -> None:
    """A stack already up keeps the settings it was started with: refuse one without fault
    injection or with another state TTL."""
    pid = topology.recorded_pid(stack.run_dir, "orchestrator")
    if pid is None:
        return
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return
    want = {b"MOBILITY_FAULT_INJECTION=1", f"MOBILITY_STATE_TTL_S={STATE_TTL_S}".encode()}
    missing = want - set(environ)
    if missing:
        names = sorted(m.decode() for m in missing)
        raise SystemExit(f"lab {stack.plan.name} is up without {names}: take it down "
                         "(mobility lab down) and run again")


def retry(what: str, fn: Callable[[], T], *, timeout: float = 90.0,
          errors: tuple[type[BaseException], ...] = (redis.RedisError,)) -> T:
    """``fn()``, retried while it raises one of ``errors`` (Redis or the API restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except errors as exc:
            if time.monotonic() > deadline:
                raise
            log.info("%s: %s; retrying", what, exc)
            time.sleep(0.25)


class Runner:
    def __init__(self, stack: Stack, api: httpx.Client) -> None:
        self.stack = stack
        self.api = api
        self.registry = Registry.from_url(stack.redis_url())
        self.celery = celery_client(stack.redis_url())
        self.seen: set[orphans.Orphan] = set()
        self.baseline_s: dict[bool, float] = {}

    # --- the API and Redis, through restarts ---

    def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return retry(f"{method} {url}", lambda: self.api.request(method, url, **kw),
                     errors=(httpx.TransportError,))

    def get_move(self, move_id: str) -> Move:
        return retry("reading the move", lambda: self.registry.get_move(move_id))

    def wait_api(self, timeout: float = BACK_WITHIN_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if self.api.get("/healthz").status_code == 200:
                    return True
            time.sleep(0.2)
        return False

    # --- a cell ---

    def ready(self, problems: list[str], notes: list[str]) -> float:
        """Until the lab has its underlay and every process of the stack answers (beat: its
        ticks are counted again); seconds it took."""
        t0 = time.monotonic()
        restored = self.hold_underlay(notes)
        try:
            # after an outage of the lab's network, agents reconnect with their own backoff
            self.stack.wait_ready(timeout=RECOVER_WITHIN_S if restored else BACK_WITHIN_S)
        except StackError as exc:
            problems.append(f"stack not ready before the cell: {str(exc).splitlines()[0]}")
        for role in ("redis", "beat", "api", "supervisor"):
            if topology.recorded_pid(self.stack.run_dir, role) is None:
                problems.append(f"{role} not running before the cell")
        ticks = retry("counting policy ticks", self.registry.policy_ticks)
        deadline = time.monotonic() + RECOVER_WITHIN_S
        while retry("counting policy ticks", self.registry.policy_ticks) <= ticks:
            if time.monotonic() > deadline:
                problems.append(f"beat scheduled nothing for {RECOVER_WITHIN_S:g} s before "
                                "the cell")
                break
            time.sleep(0.2)
        return round(time.monotonic() - t0, 2)

    def underlay_holder(self) -> str | None:
        """The host link the lab's underlay is routed through now (None: not routed)."""
        out = subprocess.run(["ip", "-4", "route", "show", self.stack.plan.underlay],
                             capture_output=True, text=True, check=True).stdout.split()
        return out[out.index("dev") + 1] if "dev" in out else None

    def hold_underlay(self, notes: list[str]) -> bool:
        """Another lab on the same underlay breaks this one (its route replaces ours; its
        teardown removes it). Wait until no other lab routes it, then route it to ours again
        (bringing the lab up is idempotent)."""
        ours = self.stack.plan.host_ifname
        holder = self.underlay_holder()
        if holder == ours:
            return False
        notes.append(f"before the cell, underlay {self.stack.plan.underlay} was routed via "
                     f"{holder or 'nothing'}, not {ours}: another lab took it")
        log.error("underlay %s is routed via %s, not %s: waiting for the other lab to go",
                  self.stack.plan.underlay, holder, ours)
        deadline = time.monotonic() + UNDERLAY_WAIT_S
        while holder is not None and holder != ours and time.monotonic() < deadline:
            time.sleep(10)
            holder = self.underlay_holder()
        if holder is None:
            self.stack.ensure_lab()
            log.warning("underlay %s routed via %s again", self.stack.plan.underlay, ours)
        return True

    def deploy(self, tag: str, *, stateful: bool) -> Pair:
        if stateful:
            service = {"name": f"{tag}-sess", "workload": "sessions", "cluster": FROM,
                       "params": {"state_mb": STATE_MB, "dirty_rate": DIRTY_RATE}}
            client = {"name": f"{tag}-sprobe", "workload": "session-probe", "cluster": FROM,
                      "peers": [service["name"]], "params": {"rate": RATE}}
            counter = "answered"
        else:
            service = {"name": f"{tag}-echo", "workload": "echo", "cluster": FROM}
            client = {"name": f"{tag}-probe", "workload": "probe", "cluster": FROM,
                      "peers": [service["name"]], "params": {"rate": RATE}}
            counter = "received"
        for spec in (client, service):  # what a crashed run of this bench left
            name = str(spec["name"])
            if self.call("GET", f"/v1/services/{name}").status_code == 200:
                log.warning("removing %s, left by an earlier run", name)
                self.call("DELETE", f"/v1/services/{name}")
        r = self.call("POST", "/v1/services", json=service)
        if r.status_code != 201:
            raise CellError(f"deploying {service['name']}: HTTP {r.status_code} {r.text[:300]}")
        r = self.call("POST", "/v1/services", json=client)
        if r.status_code != 201:
            self.call("DELETE", f"/v1/services/{service['name']}")
            raise CellError(f"deploying {client['name']}: HTTP {r.status_code} {r.text[:300]}")
        pair = Pair(service=str(service["name"]), client=str(client["name"]),
                    pod_dir=self.stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io",
                    counter=counter)
        if not labs.wait_counter(pair.progress, key=counter, at_least=WARM, timeout=30):
            for name in (pair.client, pair.service):
                self.call("DELETE", f"/v1/services/{name}")
            raise CellError(f"{pair.client} got fewer than {WARM} replies in 30 s")
        return pair

    def run_cell(self, cell: Cell, tag: str) -> dict[str, Any]:
        log.info("cell %s: %s", cell.name, cell.describe())
        row: dict[str, Any] = {"row": cell.name, "fault": cell.describe(),
                               "component": cell.component, "point": cell.point,
                               "stateful": cell.stateful, "move": None, "status": None}
        problems: list[str] = []
        notes: list[str] = []
        t0 = time.monotonic()
        row["ready_before_s"] = self.ready(problems, notes)
        pair: Pair | None = None
        try:
            pair = self.deploy(tag, stateful=cell.stateful)
            self.move_under_fault(cell, pair, row, problems)
        except Exception as exc:  # any failure is this cell's finding: the matrix goes on
            log.exception("cell %s", cell.name)
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            if row["move"]:
                self.settle(str(row["move"]))
            if pair is not None:
                self.finish(pair, row, problems)
        self.wait_state_ttl(row)
        found = retry("looking for orphans", lambda: orphans.find(
            self.stack, self.registry, state_ttl_s=STATE_TTL_S, now=time.time()))
        new = [o for o in found if o not in self.seen]
        holder = self.underlay_holder()
        if holder != self.stack.plan.host_ifname:
            row["underlay_collision"] = True
            problems.append(f"during the cell, another lab took the underlay (routed via "
                            f"{holder or 'nothing'} now): the lab's nodes lost the host")
        else:  # what a cell under another lab's collision left is counted by its re-run
            self.seen.update(found)
        row["orphans"] = [o.to_dict() for o in new]
        row["orphan_count"] = len(new)
        ok = (row["status"] in OK_STATUSES and not problems
              and (cell.kind not in ("kill", "redis") or bool(row.get("back_within_limit"))))
        row["ok"] = ok
        row["clean"] = ok and not row.get("requests_lost") and not new
        row["problems"] = problems
        if notes:
            row["notes"] = notes
        row["cell_s"] = round(time.monotonic() - t0, 1)
        if not row["clean"] and row["move"]:
            row["log_lines"] = self.log_lines(str(row["move"]))
        log.info("cell %s: %s in %s s, lost %s, orphans %d%s", cell.name, row["status"],
                 row.get("seconds"), row.get("requests_lost"), len(new),
                 f", problems {problems}" if problems else "")
        return row

    def move_under_fault(self, cell: Cell, pair: Pair, row: dict[str, Any],
                         problems: list[str]) -> None:
        faults = [cell.pause] if cell.pause else []
        r = self.call("POST", "/v1/moves", json={"service": pair.service, "to_cluster": TO,
                                                 "faults": faults})
        if r.status_code != 202:
            raise CellError(f"move refused: HTTP {r.status_code} {r.text[:300]}")
        move_id = str(r.json()["id"])
        row["move"] = move_id
        watch = Watch()
        role: str | None = None
        killed: int | None = None
        restarts_before = 0
        killed_at = 0.0
        if cell.kind == "none":
            pass
        elif cell.point == MIDSYNC:
            before = self.wait_in_sync(move_id)
            if before is None:
                problems.append("the move never streamed state in SYNC")
            else:
                role = self.role(cell, before)
                restarts_before = self.restarts(role)
                killed, killed_at = self.kill(role)
                after = self.get_move(move_id)
                row["hit"] = {"phase": str(before.phase) if before.phase else None,
                              "frames": bool(self.registry.r.exists(
                                  keys.state_frames(move_id))),
                              "sync_done_after_kill": str(Phase.SYNC) in after.phases_done}
        else:
            assert cell.pause is not None
            held = self.wait_paused(move_id, cell.pause)
            if held is None:
                problems.append(f"the move never reached {cell.pause}")
            elif cell.kind == "kill":
                role = self.role(cell, held)
                restarts_before = self.restarts(role)
                killed, killed_at = self.kill(role)
                self.release(move_id)
            elif cell.kind == "redis":
                role = "redis"
                restarts_before = self.restarts(role)
                killed, killed_at = self.kill(role)
                self.wait_back(role, killed, killed_at, watch)
                self.release(move_id)
            elif cell.kind == "wan":
                row["wan"] = self.cut_and_release(move_id)
        if role is not None:
            row["role"] = role
            row["pid_killed"] = killed
        self.watch(move_id, role, killed, killed_at, watch)
        if role is not None:
            row["process_back_s"] = watch.process_s
            row["back_s"] = watch.back_s
            row["back_within_limit"] = (watch.back_s is not None
                                        and watch.back_s <= BACK_WITHIN_S)
            row["pid_now"] = watch.back_pid
            row["supervisor_restarts"] = self.restarts(role) - restarts_before
            if not row["back_within_limit"]:
                problems.append(f"{role} not answering within {BACK_WITHIN_S:g} s of the kill"
                                f" (new process after {watch.process_s} s, answering after "
                                f"{watch.back_s} s)")
        move = watch.move
        assert move is not None
        row["status"] = str(move.status)
        row["seconds"] = (round(move.finished_at - move.created_at, 2)
                          if move.finished_at else None)
        base = self.baseline_s.get(cell.stateful)
        row["over_baseline"] = (round(row["seconds"] / base, 2)
                                if row["seconds"] and base else None)
        row["epoch"] = move.epoch
        row["phases_done"] = list(move.phases_done)
        row["cutover_confirmed"] = move.cutover_confirmed
        row["error"] = move.error
        row["events"] = self.event_kinds(move_id)
        if not move.status.terminal:
            problems.append(f"the move did not end within {END_WITHIN_S:g} s "
                            f"({move.status}, {move.phase})")
        at = self.call("GET", f"/v1/services/{pair.service}")
        if at.status_code == 200 and at.json().get("instance"):
            inst = at.json()["instance"]
            row["landed"] = f"{inst['cluster']}/{inst['node']}"
        got = int(labs.read_counters(pair.progress).get(pair.counter, 0))
        row["traffic_after"] = labs.wait_counter(pair.progress, key=pair.counter,
                                                 at_least=got + WARM, timeout=20)
        if not row["traffic_after"]:
            problems.append(f"{pair.client} got no replies for 20 s after the move")

    # --- the faults ---

    def role(self, cell: Cell, move: Move) -> str:
        if cell.component in ("source-agent", "target-agent"):
            inst = move.source if cell.component == "source-agent" else move.target
            if inst is None:
                raise CellError(f"move {move.id} has no {cell.component} instance yet")
            return f"agent-{inst.cluster}-{inst.node}"
        assert cell.component is not None
        return cell.component

    def restarts(self, role: str) -> int:
        return int(supervise.read_state(self.stack.run_dir).get(role, {}).get("restarts", 0))

    def kill(self, role: str) -> tuple[int, float]:
        """SIGKILL ``role``'s recorded process; until it is gone."""
        pid = topology.recorded_pid(self.stack.run_dir, role)
        if pid is None:
            raise CellError(f"{role} has no live recorded process to kill")
        os.kill(pid, signal.SIGKILL)
        at = time.monotonic()
        log.info("killed %s (pid %s)", role, pid)
        deadline = at + 10
        while topology.is_running(pid):
            if time.monotonic() > deadline:
                raise CellError(f"{role} (pid {pid}) still runs 10 s after SIGKILL")
            time.sleep(0.01)
        reap_children()  # a process this bench started is its zombie until reaped
        return pid, at

    def release(self, move_id: str) -> None:
        retry("releasing the pause", lambda: self.registry.release_pause(move_id))

    def revived(self, role: str, killed: int, killed_at: float, watch: Watch) -> bool:
        """One look at whether ``role`` runs again (a new recorded process) and answers: Redis
        a PING, the API /healthz, the orchestrator and the node agents their ping task, beat
        a policy tick counted after its new process came."""
        if watch.back_s is not None:
            return True
        pid = topology.recorded_pid(self.stack.run_dir, role)
        if pid is None or pid == killed:
            return False
        now = time.monotonic()
        if watch.process_s is None:
            watch.process_s = round(now - killed_at, 2)
            if role == "beat":
                watch.ticks_at = retry("counting policy ticks", self.registry.policy_ticks)
        if self.answers(role, watch):
            watch.back_pid, watch.back_s = pid, round(time.monotonic() - killed_at, 2)
            return True
        return False

    def answers(self, role: str, watch: Watch) -> bool:
        try:
            if role == "redis":
                return bool(self.registry.r.ping())
            if role == "beat":
                return self.registry.policy_ticks() > (watch.ticks_at or 0)
        except redis.RedisError:
            return False
        if role == "api":
            try:
                return self.api.get("/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        if role == "orchestrator":
            return self.ping("orchestrator.ping", ORCHESTRATION)
        node = next((n for n in self.stack.plan.nodes
                     if role == f"agent-{n.cluster}-{n.name}"), None)
        if node is not None:
            return self.ping("node.ping", node_queue(node.cluster, node.name))
        return True

    def ping(self, task: str, queue: str) -> bool:
        res = self.celery.send_task(task, args=[{}] if task == "node.ping" else [],
                                    queue=queue, expires=5)
        try:
            res.get(timeout=2)
            return True
        except Exception:  # a timeout, or the broker unreachable: not answering yet
            return False
        finally:
            with contextlib.suppress(Exception):
                res.forget()

    def wait_back(self, role: str, killed: int, killed_at: float, watch: Watch) -> None:
        """Until ``role`` answers again, at most BACK_WITHIN_S after the kill."""
        while (not self.revived(role, killed, killed_at, watch)
               and time.monotonic() < killed_at + BACK_WITHIN_S):
            time.sleep(0.1)

    def wait_paused(self, move_id: str, fault: str) -> Move | None:
        """Until the move holds at ``fault`` (its event); None if it ends first."""
        deadline = time.monotonic() + PAUSE_WITHIN_S
        while time.monotonic() < deadline:
            if any(e.kind == "fault_paused" and e.detail == fault
                   for e in self.registry.events(move_id)):
                return self.get_move(move_id)
            if self.get_move(move_id).status.terminal:
                return None
            time.sleep(0.05)
        return None

    def wait_in_sync(self, move_id: str) -> Move | None:
        """Until the move is in SYNC with state streaming (its frame stream exists)."""
        deadline = time.monotonic() + PAUSE_WITHIN_S
        frames = keys.state_frames(move_id)
        while time.monotonic() < deadline:
            move = self.registry.get_move(move_id)
            if move.status.terminal or str(Phase.SYNC) in move.phases_done:
                return None
            if move.phase == Phase.SYNC and self.registry.r.exists(frames):
                return move
            time.sleep(0.005)
        return None

    def router_ports(self, cluster: str) -> list[str]:
        return [n.router_port for n in self.stack.plan.nodes if n.cluster == cluster]

    def set_ports(self, cluster: str, state: str) -> None:
        ns = self.stack.plan.router_namespace
        for port in self.router_ports(cluster):
            subprocess.run(["ip", "-n", ns, "link", "set", "dev", port, state], check=True)

    def cut_and_release(self, move_id: str) -> dict[str, Any]:
        """Cut the target cluster off (its nodes' ports on the WAN router down: the bridge
        keeps its routes, marked linkdown), release the pause, restore after WAN_CUT_S."""
        plan = self.stack.plan
        t0 = time.monotonic()
        try:
            self.set_ports(TO, "down")
            log.info("%s cut off at %s", TO, plan.router_namespace)
            self.release(move_id)
            time.sleep(max(0.0, t0 + WAN_CUT_S - time.monotonic()))
        finally:
            self.set_ports(TO, "up")
        cut_s = round(time.monotonic() - t0, 2)
        log.info("%s back after %s s", TO, cut_s)
        lost_routes = []
        for n in plan.nodes:
            if n.cluster != TO:
                continue
            out = subprocess.run(["ip", "-n", plan.router_namespace, "-4", "route", "show",
                                  n.pod_subnet], capture_output=True, text=True, check=True)
            if not out.stdout.strip():
                lost_routes.append(n.pod_subnet)
                subprocess.run(["ip", "-n", plan.router_namespace, "route", "replace",
                                n.pod_subnet, "via", n.underlay_ip], check=True)
        return {"cluster": TO, "ports": self.router_ports(TO), "cut_s": cut_s,
                "routes_lost": lost_routes}

    def watch(self, move_id: str, role: str | None, killed: int | None, killed_at: float,
              watch: Watch) -> None:
        """Until the move has ended (at most END_WITHIN_S) and the killed role answers again
        (at most RECOVER_WITHIN_S after the kill: past BACK_WITHIN_S the cell fails, but it
        waits on, so the next cell starts with every process back)."""
        end_deadline = time.monotonic() + END_WITHIN_S
        while True:
            now = time.monotonic()
            if watch.move is None or not watch.move.status.terminal:
                with contextlib.suppress(redis.RedisError):
                    watch.move = self.registry.get_move(move_id)
            role_done = (role is None or killed is None
                         or self.revived(role, killed, killed_at, watch)
                         or now > killed_at + RECOVER_WITHIN_S)
            move_done = watch.move is not None and (watch.move.status.terminal
                                                    or now > end_deadline)
            if move_done and role_done:
                break
            time.sleep(0.1)
        if watch.move is None:
            watch.move = self.get_move(move_id)

    # --- after the move ---

    def settle(self, move_id: str, timeout: float = 30.0) -> None:
        """A move a failed cell left held: release its pause, give it a while to end."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(redis.RedisError):
            if self.registry.get_move(move_id).status.terminal:
                return
            self.registry.release_pause(move_id)
            while (time.monotonic() < deadline
                   and not self.registry.get_move(move_id).status.terminal):
                time.sleep(0.2)

    def finish(self, pair: Pair, row: dict[str, Any], problems: list[str]) -> None:
        """Remove the client (its results are then written) and the service."""
        if not self.wait_api():
            problems.append(f"the API did not answer within {BACK_WITHIN_S:g} s")
            return
        r = self.call("DELETE", f"/v1/services/{pair.client}")
        if r.status_code != 204:
            problems.append(f"removing {pair.client}: HTTP {r.status_code} {r.text[:200]}")
        else:
            try:
                result = json.loads((pair.pod_dir / "probe.json").read_text())
            except (OSError, ValueError) as exc:
                problems.append(f"no results from {pair.client}: {exc}")
            else:
                lost = int(result.get("lost", 0))
                row["requests"] = {k: result.get(k) for k in (
                    "sent", "received", "answered", "lost", "duplicated", "retransmits",
                    "counters_ok", "max_gap_ms") if k in result}
                row["requests_lost"] = lost
                if result.get("counters_ok") is False:
                    problems.append("the session counters broke (counters_ok false)")
        r = self.call("DELETE", f"/v1/services/{pair.service}")
        if r.status_code != 204:
            problems.append(f"removing {pair.service}: HTTP {r.status_code} {r.text[:200]}")

    def wait_state_ttl(self, row: dict[str, Any]) -> None:
        """Until the state TTL has passed since the move ended (its keys must be gone)."""
        if not row.get("move"):
            return
        with contextlib.suppress(redis.RedisError):
            move = self.registry.get_move(str(row["move"]))
            if move.finished_at is not None:
                time.sleep(max(0.0, move.finished_at + STATE_TTL_S + 1.5 - time.time()))

    def event_kinds(self, move_id: str) -> list[str]:
        """The move's events in short: kind (and phase), in order."""
        try:
            evs = self.registry.events(move_id)
        except redis.RedisError:
            return []
        return [f"{e.kind}:{e.phase}" if e.phase else e.kind for e in evs]

    def log_lines(self, move_id: str) -> list[str]:
        """The stack's warnings and errors that name the move (the last few)."""
        out = []
        for path in sorted(self.stack.logs.glob("*.log")):
            with contextlib.suppress(OSError), open(path, errors="replace") as fh:
                for line in fh:
                    low = line.lower()
                    if move_id in line and ("error" in low or "warning" in low
                                            or "exception" in low):
                        out.append(f"{path.stem}: {line.strip()[:400]}")
        return out[-LOG_LINES:]


def run(stack: Stack, cells: list[Cell], *, started: float) -> int:
    """The baselines, then the cells; prints the JSON object, returns the exit status.
    ``started``: when the whole run began (monotonic), for its wall time."""
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    baseline: dict[str, Any] = {}
    with stack.api_client(timeout=120) as api:
        runner = Runner(stack, api)
        kinds = sorted({c.stateful for c in cells})
        for i, cell in enumerate(b for b in BASELINES if b.stateful in kinds):
            got = runner.run_cell(cell, f"fb{i}")
            baseline[cell.name] = {k: got.get(k) for k in (
                "status", "seconds", "requests_lost", "orphan_count", "problems", "move")}
            if got["status"] == "succeeded" and got.get("seconds"):
                runner.baseline_s[cell.stateful] = float(got["seconds"])
            baseline[cell.name]["clean"] = got["clean"]
            if got["orphan_count"]:
                baseline[cell.name]["orphans"] = got["orphans"]
        for i, cell in enumerate(cells):
            row = runner.run_cell(cell, f"fx{i:02d}")
            if row.get("underlay_collision"):
                log.warning("cell %s ran while another lab held the underlay: once more",
                            cell.name)
                first = {k: row.get(k) for k in ("move", "status", "problems")}
                row = runner.run_cell(cell, f"fr{i:02d}")
                row["first_attempt"] = first
            rows.append(row)
    lost = sum(int(r.get("requests_lost") or 0) for r in rows)
    n_orphans = (sum(int(r["orphan_count"]) for r in rows)
                 + sum(int(b.get("orphan_count") or 0) for b in baseline.values()))
    cells_ok = sum(1 for r in rows if r["ok"])
    print(json.dumps({
        "lab": stack.plan.name,
        "cells": len(rows),
        "cells_ok": cells_ok,
        "cells_clean": sum(1 for r in rows if r["clean"]),
        "requests_lost_total": lost,
        "orphans_total": n_orphans,
        "failed": [r["row"] for r in rows if not r["clean"]],
        "baseline": baseline,
        "state_ttl_s": STATE_TTL_S,
        "matrix_s": round(time.monotonic() - t0, 1),
        "wall_s": round(time.monotonic() - started, 1),
        "rows": rows,
    }))
    baseline_ok = all(b.get("clean") for b in baseline.values())
    ok = cells_ok == len(rows) and lost == 0 and n_orphans == 0 and baseline_ok
    return 0 if ok else 1


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    log.info("%s took %.1f s", what, time.monotonic() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="rows to run, comma-separated (globs allowed: "
                                       "'orchestrator@*', '*@midsync')")
    parser.add_argument("--list", action="store_true", help="print the rows (JSON) and exit")
    parser.add_argument("--logs-to", type=Path,
                        help="copy the stack's logs (run_dir/logs) here at the end")
    labs.add_arguments(parser)
    args = parser.parse_args()
    labs.start_logging()
    cells = select(args.only)
    if args.list:
        print(json.dumps([{"row": c.name, "fault": c.describe()} for c in cells]))
        return 0
    t0 = time.monotonic()
    stack = fault_stack()
    check_running_stack(stack)
    code = 1
    try:
        with timed("bringing the stack up"):
            stack.up()
        code = run(stack, cells, started=t0)
    finally:
        if args.logs_to is not None and stack.logs.is_dir():
            shutil.copytree(stack.logs, args.logs_to, dirs_exist_ok=True)
        if args.down and labs.tear_down(stack):
            log.error("namespaces of lab %s are left after the teardown", stack.plan.name)
            code = code or 1
        log.info("fault matrix: %.1f s in all, exit %d", time.monotonic() - t0, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
