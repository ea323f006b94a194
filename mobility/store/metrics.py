"""The aggregates ``GET /metrics`` exposes, kept in a few Redis hashes by whoever sees them.

Why in Redis and not in each process's memory: the API, the orchestration workers, beat and
the node agents are separate processes (on separate hosts, in a real site), and a move's end
is written by whichever worker ran its last phase (or the reaper). So the process that ends a
move adds its numbers to hashes under ``mob:metrics:`` (:mod:`mobility.keys`), *in the same
transaction* that makes the move terminal (:meth:`MoveStore.finish_move`): a move is counted
exactly once, and never one that did not end. A scrape then reads those few hashes in one
pipeline (:meth:`MetricStore.snapshot`), whatever the number of moves or services: it never
scans the moves.

Histograms are kept as per-bucket counts (not cumulative: one ``HINCRBY`` per observation),
their sum and count; the exposition makes them cumulative. Buckets are fixed here, so every
writer and the reader agree on them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import redis
from redis.client import Pipeline

from mobility import keys
from mobility.models import Move, Phase

# Milliseconds. A phase takes from a few ms (ADMIT) to minutes (SYNC of a large state).
PHASE_BUCKETS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                                       30000, 60000, 300000)
# The freeze window: what a client of a stateful service waits; tens of ms is the goal.
FREEZE_BUCKETS_MS: tuple[float, ...] = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
                                        5000, 10000)
PHASES: tuple[str, ...] = tuple(str(p) for p in Phase)
SEP = "|"  # between a hash field's parts; no label value may hold it (see _label)
INF = "+Inf"


def _label(value: str | None, default: str = "unknown") -> str:
    """A label value from a move's field: the separator cannot be one (it would split a
    field in two when read back)."""
    text = str(value) if value else default
    return text.replace(SEP, "_")[:64]


def bucket_of(value: float, bounds: Sequence[float]) -> str:
    """The field of the first bucket whose upper bound holds ``value`` (``+Inf`` past all)."""
    i = bisect.bisect_left(bounds, value)
    return _bound(bounds[i]) if i < len(bounds) else INF


def _bound(b: float) -> str:
    return f"{b:g}"


def record_move_end(pipe: Pipeline, move: Move) -> None:
    """Queue, in ``pipe`` (the transaction that makes ``move`` terminal), what its end adds:
    its count by status and origin, each phase's duration, its freeze window, the state bytes
    it moved and its pre-copy rounds."""
    pipe.hincrby(keys.METRICS_MOVES, f"{move.status}{SEP}{_label(move.origin)}", 1)
    for phase, ms in move.phase_ms.items():
        if phase not in PHASES:
            continue
        pipe.hincrby(keys.METRICS_PHASE_MS, f"{phase}{SEP}{bucket_of(ms, PHASE_BUCKETS_MS)}", 1)
        pipe.hincrbyfloat(keys.METRICS_PHASE_MS, f"{phase}{SEP}sum", float(ms))
        pipe.hincrby(keys.METRICS_PHASE_MS, f"{phase}{SEP}count", 1)
    if move.freeze_ms is not None:
        pipe.hincrby(keys.METRICS_FREEZE_MS, bucket_of(move.freeze_ms, FREEZE_BUCKETS_MS), 1)
        pipe.hincrbyfloat(keys.METRICS_FREEZE_MS, "sum", float(move.freeze_ms))
        pipe.hincrby(keys.METRICS_FREEZE_MS, "count", 1)
    if move.state_bytes:
        pipe.hincrby(keys.METRICS_TOTALS, "state_bytes", int(move.state_bytes))
    if move.sync_rounds:
        pipe.hincrby(keys.METRICS_TOTALS, "sync_rounds", int(move.sync_rounds))


@dataclass(frozen=True)
class Histogram:
    """One histogram as read back: per-bucket counts (not cumulative), sum and count."""

    buckets: dict[str, int] = field(default_factory=dict)
    sum: float = 0.0
    count: int = 0

    def cumulative(self, bounds: Sequence[float]) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf`` (= ``count``)."""
        out, running = [], 0
        for b in bounds:
            running += self.buckets.get(_bound(b), 0)
            out.append((_bound(b), running))
        out.append((INF, running + self.buckets.get(INF, 0)))
        return out


@dataclass(frozen=True)
class Snapshot:
    """Everything a scrape shows, read in one round trip."""

    moves: dict[tuple[str, str], int]  # (status, origin) -> count
    phases: dict[str, Histogram]
    freeze: Histogram
    state_bytes: int
    sync_rounds: int
    repairs: dict[tuple[str, str], int]  # (node, outcome) -> count
    probes: dict[str, int]  # "sent", "lost", "duplicated"
    queues: dict[str, int]  # queue -> length
    services: int
    active_moves: int


def _text(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _pair(field_name: str) -> tuple[str, str] | None:
    parts = field_name.split(SEP)
    return (parts[0], parts[1]) if len(parts) == 2 else None


class MetricStore:
    """Writes (repairs, probe reports) and the scrape's one read of ``mob:metrics:*``.

    Not part of the :class:`~mobility.store.Registry` mixins on purpose: the node agents and
    the API hold only this, over the registry's connection (``MetricStore(registry.r)``)."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def count_repairs(self, node: str, *, repaired: int = 0, broken: int = 0) -> None:
        """What one reconcile pass of ``node`` (``cluster.node``) found drifted: ends it
        recreated (``repaired``) and ends still wrong after trying (``broken``)."""
        if not (repaired or broken):
            return
        with self.r.pipeline(transaction=False) as p:
            if repaired:
                p.hincrby(keys.METRICS_REPAIRS, f"{_label(node)}{SEP}repaired", repaired)
            if broken:
                p.hincrby(keys.METRICS_REPAIRS, f"{_label(node)}{SEP}broken", broken)
            p.execute()

    def report_probe(self, move_id: str, *, sent: int, lost: int, duplicated: int = 0) -> bool:
        """Add what a probe saw during move ``move_id`` (the demo's, a bench's); once per move
        (a guard key per move id): False when that move's probe was already reported."""
        with self.r.pipeline(transaction=True) as p:
            p.hsetnx(keys.METRICS_PROBED, move_id, 1)
            first = bool(p.execute()[0])
        if not first:
            return False
        with self.r.pipeline(transaction=True) as p:
            p.hincrby(keys.METRICS_PROBES, "sent", max(0, int(sent)))
            p.hincrby(keys.METRICS_PROBES, "lost", max(0, int(lost)))
            p.hincrby(keys.METRICS_PROBES, "duplicated", max(0, int(duplicated)))
            p.execute()
        return True

    def snapshot(self, queues: Iterable[str], *, prioritised: Iterable[str] = ()) -> Snapshot:
        """Read every aggregate and the length of each of ``queues``, in one pipeline.

        A queue in ``prioritised`` counts its priority lists too (kombu keeps a task sent with
        a priority in a list of its own: a move's start waits in one, see ``workers.app``).
        """
        names = list(queues)
        with_priorities = set(prioritised)
        lists = [[q, *(f"{q}{keys.KOMBU_PRIORITY_SEP}{p}" for p in keys.KOMBU_PRIORITY_STEPS
                       if q in with_priorities)] for q in names]
        with self.r.pipeline(transaction=False) as p:
            p.hgetall(keys.METRICS_MOVES)
            p.hgetall(keys.METRICS_PHASE_MS)
            p.hgetall(keys.METRICS_FREEZE_MS)
            p.hgetall(keys.METRICS_TOTALS)
            p.hgetall(keys.METRICS_REPAIRS)
            p.hgetall(keys.METRICS_PROBES)
            p.scard(keys.SERVICES)
            p.scard(keys.ACTIVE_MOVES)
            for group in lists:
                for q in group:
                    p.llen(q)
            out = p.execute()
        lengths, at = [], 8
        for group in lists:
            lengths.append(sum(int(n) for n in out[at:at + len(group)]))
            at += len(group)
        moves_raw, phase_raw, freeze_raw, totals_raw, repairs_raw, probes_raw = (
            _text(cast(Mapping[bytes, bytes], x)) for x in out[:6])
        moves = {pair: int(v) for k, v in moves_raw.items() if (pair := _pair(k))}
        phases: dict[str, Histogram] = {}
        for phase in PHASES:
            prefix = f"{phase}{SEP}"
            fields = {k.removeprefix(prefix): v for k, v in phase_raw.items()
                      if k.startswith(prefix)}
            phases[phase] = _histogram(fields)
        repairs = {pair: int(v) for k, v in repairs_raw.items() if (pair := _pair(k))}
        totals = {k: int(v) for k, v in totals_raw.items()}
        return Snapshot(moves=moves, phases=phases, freeze=_histogram(freeze_raw),
                        state_bytes=totals.get("state_bytes", 0),
                        sync_rounds=totals.get("sync_rounds", 0), repairs=repairs,
                        probes={k: int(v) for k, v in probes_raw.items()},
                        queues=dict(zip(names, lengths, strict=True)),
                        services=int(out[6]), active_moves=int(out[7]))


def _histogram(fields: Mapping[str, str]) -> Histogram:
    buckets = {k: int(v) for k, v in fields.items() if k not in ("sum", "count")}
    return Histogram(buckets=buckets, sum=float(fields.get("sum", 0.0)),
                     count=int(fields.get("count", 0)))
