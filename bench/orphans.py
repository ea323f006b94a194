"""What a lab run leaves behind, for the fault matrix (:mod:`bench.faults`).

An orphan is one of:

- ``pod``: a pod namespace of the lab that is no service's instance (nor the source or target
  of a move still in flight);
- ``workload``: a workload process of the lab whose pod is no service's instance;
- ``process``: a role of the stack (Redis, a node agent, the orchestrator, beat, the API, the
  supervisor) with no live recorded process, or with more than one process running as it;
- ``lease``: a move lease (``mob:lease:move:<id>``) of a move that has ended (or is unknown);
- ``job``: an entry of ``mob:jobs`` (a deploy or removal journal) while none is in flight;
- ``lock``: a service lock not held by a move in flight;
- ``state``: a key of a move's state transfer (``mob:state:<move>:*``) still there after the
  state TTL has passed since its move ended, or without an expiry.

Processes are recognized by what their command line names (the lab's own run directory, node
names, ports), never by a broad name, and only looked at, never signalled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from cli.stack import Stack
from dataplane import netlink
from dataplane.lab import topology
from mobility import keys
from mobility.errors import NotFound
from mobility.models import Move
from mobility.store import Registry
from state_transfer.keys import PREFIX as STATE_PREFIX

TOKEN_SPLIT = re.compile(r"[\s:\[\]()]+")
WORKLOAD_MODULE = "dataplane.lab.workloads."


@dataclass(frozen=True)
class Orphan:
    kind: str
    what: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        out = {"kind": self.kind, "what": self.what}
        if self.detail:
            out["detail"] = self.detail
        return out


def _cmdlines() -> dict[int, list[str]]:
    """Every process's command line (those that vanish meanwhile are skipped)."""
    out: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            out[int(entry.name)] = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return out


def role_matchers(stack: Stack) -> dict[str, str]:
    """Per role of the stack, a token only that role's command line carries."""
    run_dir = str(stack.run_dir)
    name = stack.plan.name
    out = {
        "redis": f"127.0.0.1:{stack.redis_port}",
        "orchestrator": f"orchestrator@{name}",
        "beat": f"{run_dir}/beat-schedule",
        "api": "api.app:create_app",  # with the port, below
        "supervisor": "cli.supervise",  # with the run directory, below
    }
    for n in stack.plan.nodes:
        out[f"agent-{n.cluster}-{n.name}"] = f"agent-{n.cluster}-{n.name}@{name}"
    return out


def _matches(stack: Stack, role: str, token: str, argv: list[str]) -> bool:
    joined = " ".join(argv)
    if role == "redis":
        return bool(argv) and Path(argv[0].split()[0]).name == "redis-server" and (
            token in joined)
    if role == "api":
        return token in joined and str(stack.api_port) in argv
    if role == "supervisor":
        return token in argv and str(stack.run_dir) in argv
    if role == "beat":
        return token in argv or token in joined
    return token in set(TOKEN_SPLIT.split(joined))


def processes(stack: Stack) -> list[Orphan]:
    """Roles with no live recorded process, or with more than one process running as them."""
    cmdlines = _cmdlines()
    out = []
    for role, token in role_matchers(stack).items():
        running = sorted(pid for pid, argv in cmdlines.items()
                         if topology.is_running(pid) and _matches(stack, role, token, argv))
        recorded = topology.recorded_pid(stack.run_dir, role)
        if recorded is None:
            out.append(Orphan("process", role, "not alive (no live recorded process)"
                              + (f"; running unrecorded: {running}" if running else "")))
        elif len(running) > 1:
            out.append(Orphan("process", role, f"duplicated: pids {running} "
                                               f"(recorded {recorded})"))
    return out


def _pods_in_use(registry: Registry) -> set[str]:
    pods = {s.instance.pod for s in registry.services().values() if s.instance is not None}
    for m in registry.active_moves():
        if not m.status.terminal:
            pods.update(i.pod for i in (m.source, m.target) if i is not None)
    return pods


def pods(stack: Stack, registry: Registry) -> list[Orphan]:
    """Pod namespaces and workload processes that no service's instance owns."""
    in_use = _pods_in_use(registry)
    prefix = stack.plan.pod_namespace("")
    out = [Orphan("pod", ns, "namespace of no service's instance")
           for ns in netlink.namespaces(prefix) if ns.removeprefix(prefix) not in in_use]
    pods_dir = f"{stack.run_dir}/pods/"
    for pid, argv in sorted(_cmdlines().items()):
        joined = " ".join(argv)
        if WORKLOAD_MODULE not in joined or pods_dir not in joined:
            continue
        pod = joined.split(pods_dir, 1)[1].split("/", 1)[0]
        if pod not in in_use and topology.is_running(pid):
            module = next((a for a in argv if a.startswith(WORKLOAD_MODULE)), "?")
            out.append(Orphan("workload", f"pid {pid}", f"{module} of pod {pod}, which no "
                                                        "service's instance owns"))
    return out


def _move(registry: Registry, move_id: str) -> Move | None:
    try:
        return registry.get_move(move_id)
    except NotFound:
        return None


def _in_flight(registry: Registry, move_id: str) -> bool:
    move = _move(registry, move_id)
    return (move is not None and not move.status.terminal
            and bool(registry.r.sismember(keys.ACTIVE_MOVES, move_id)))


def redis_keys(registry: Registry, *, state_ttl_s: float, now: float) -> list[Orphan]:
    """Leases of ended moves, journal entries, locks no move in flight holds, state keys
    past their TTL."""
    r = registry.r
    out = []
    lease_prefix = keys.move_lease("")
    for raw in r.scan_iter(match=keys.move_lease("*"), count=500):
        key = raw.decode()
        move_id = key.removeprefix(lease_prefix)
        move = _move(registry, move_id)
        if move is None or move.status.terminal:
            out.append(Orphan("lease", key, f"move {move.status if move else 'unknown'}"))
    for member in sorted(m.decode() for m in cast(set[bytes], r.smembers(keys.JOBS))):
        out.append(Orphan("job", f"{keys.JOBS} {member}", "journal entry with no job in flight"))
    for raw in r.scan_iter(match=keys.service_lock("*"), count=500):
        key = raw.decode()
        owner_raw = cast(bytes | None, r.get(key))
        owner = owner_raw.decode() if owner_raw else ""
        if not (keys.valid_move_id(owner) and _in_flight(registry, owner)):
            out.append(Orphan("lock", key, f"held by {owner or 'nobody'}, not a move in flight"))
    for raw in r.scan_iter(match=f"{STATE_PREFIX}*", count=500):
        key = raw.decode()
        move_id = key.removeprefix(STATE_PREFIX).split(":", 1)[0]
        move = _move(registry, move_id)
        ttl = int(r.ttl(key))
        if move is not None and not move.status.terminal:
            continue
        ended = move.finished_at if move is not None else None
        if ttl == -1:
            out.append(Orphan("state", key, "no expiry"))
        elif ttl >= 0 and (ended is None or now > ended + state_ttl_s + 1):
            out.append(Orphan("state", key, f"still there {now - (ended or now):.1f} s after "
                                            f"the move ended (TTL {state_ttl_s:g} s)"))
    return out


def find(stack: Stack, registry: Registry, *, state_ttl_s: float, now: float) -> list[Orphan]:
    return [*pods(stack, registry), *processes(stack),
            *redis_keys(registry, state_ttl_s=state_ttl_s, now=now)]
