"""Signal series, policies, the rebalancer's configuration and its last run.

A series is a sorted set of ``(timestamp, value)`` samples under a key built from its
:class:`~mobility.policies.SeriesKey`; a bounded recent window is kept per series.

Bounded in number too: a service (a cluster, for cluster-level series) holds at most
``max_series`` distinct series at once, counted in a set per owner
(:func:`mobility.keys.signal_owner`) under WATCH, so a batch that would pass the bound is
refused whole (409) and nothing of it is stored. A series that expired stops counting.

Readers never fail on what is stored: a series key that does not parse, a sample, policy or
configuration that does not decode, is skipped (and logged), never raised to the caller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import WatchError

from mobility import keys
from mobility.errors import Conflict, Invalid, MobilityError
from mobility.policies import Policy, SeriesKey
from mobility.rebalancing import Constraints, MaintenanceWindow, Plan
from mobility.store.base import StoreBase, pack, unpack

log = logging.getLogger(__name__)

DEFAULT_MAX_MOVES = 4  # the rebalancer's cap on moves per run, until the API sets one
DEFAULT_MAX_SERIES = 64  # distinct series per owner (a service, or a cluster's own series)
# What decoding stored data may raise: msgpack's errors are ValueErrors; a record of the wrong
# shape raises the others; the domain's validation raises its own.
UNREADABLE = (ValueError, TypeError, KeyError, AttributeError, MobilityError)


@dataclass(frozen=True)
class RebalanceRun:
    """What one scheduled rebalance did: its plan (as shown by the API), started and refused."""

    at: float
    plan: Mapping[str, object]
    started: tuple[str, ...] = ()
    refused: tuple[Mapping[str, str], ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {"at": self.at, "plan": dict(self.plan), "started": list(self.started),
                "refused": [dict(r) for r in self.refused]}

    @classmethod
    def of(cls, *, at: float, plan: Plan, started: Sequence[str],
           refused: Sequence[Mapping[str, str]]) -> RebalanceRun:
        return cls(at=at, plan=plan.to_dict(), started=tuple(started),
                   refused=tuple(dict(r) for r in refused))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RebalanceRun:
        return cls(at=float(d["at"]), plan=dict(d["plan"]),
                   started=tuple(str(s) for s in d.get("started", [])),
                   refused=tuple({str(k): str(v) for k, v in r.items()}
                                 for r in d.get("refused", [])))


def constraints_to_dict(c: Constraints) -> dict[str, object]:
    return {"max_moves": c.max_moves, "pinned": sorted(c.pinned),
            "anti_affinity": {g: sorted(m) for g, m in c.anti_affinity.items()},
            "windows": [{"cluster": w.cluster, "start": w.start, "end": w.end}
                        for w in c.windows]}


def constraints_from_dict(raw: Mapping[str, Any]) -> Constraints:
    return Constraints(
        pinned=frozenset(str(p) for p in raw.get("pinned", [])),
        anti_affinity={str(g): frozenset(str(x) for x in m)
                       for g, m in dict(raw.get("anti_affinity", {})).items()},
        max_moves=int(raw.get("max_moves", DEFAULT_MAX_MOVES)),
        windows=tuple(MaintenanceWindow(cluster=str(w["cluster"]), start=float(w["start"]),
                                        end=float(w["end"]))
                      for w in raw.get("windows", [])),
    )


class AutomationStore(StoreBase):

    # --- signals ---

    def add_samples(self, samples: Sequence[tuple[SeriesKey, float, float]], *, keep_s: float,
                    keep_samples: int, max_series: int = DEFAULT_MAX_SERIES) -> None:
        """Append ``(series, timestamp, value)`` samples; each series keeps its last
        ``keep_s`` seconds, at most ``keep_samples`` samples (a bounded recent window).

        All or nothing: Invalid (a key component outside :data:`mobility.keys.SAFE_COMPONENT`)
        or Conflict (an owner would hold more than ``max_series`` series) stores nothing."""
        by_owner: dict[str, set[str]] = {}
        rows = []
        for sk, ts, value in samples:
            try:
                key = keys.signal_checked(sk.series, sk.cluster, sk.service, sk.region)
            except ValueError as exc:
                raise Invalid(str(exc)) from exc
            by_owner.setdefault(keys.signal_owner(sk.cluster, sk.service), set()).add(key)
            rows.append((key, ts, value))
        if not rows:
            return
        owners = sorted(by_owner)
        ttl = int(keep_s) + 60
        with self.r.pipeline() as p:
            while True:
                try:
                    p.watch(*owners)  # type: ignore[no-untyped-call]
                    held = {o: {m.decode() for m in cast(set[bytes], p.smembers(o))}
                            for o in owners}
                    stale = self._stale(set().union(*held.values()))
                    for owner in owners:
                        live = held[owner] - stale
                        total = len(live | by_owner[owner])
                        if total > max_series:
                            raise Conflict(
                                f"{_describe(owner)} would hold {total} distinct series, at "
                                f"most {max_series} (a series is a series name, cluster, "
                                f"service and region); nothing of this batch was stored")
                    p.multi()
                    newest: dict[str, float] = {}
                    for key, ts, value in rows:
                        p.zadd(key, {pack([ts, value]): ts})
                        newest[key] = max(ts, newest.get(key, ts))
                    p.sadd(keys.SIGNALS, *newest)
                    for key, ts in newest.items():
                        p.zremrangebyscore(key, "-inf", ts - keep_s)
                        p.zremrangebyrank(key, 0, -keep_samples - 1)
                        p.expire(key, ttl)
                    for owner in owners:
                        gone = held[owner] & stale
                        if gone:
                            p.srem(owner, *gone)
                        p.sadd(owner, *by_owner[owner])
                        p.expire(owner, ttl)
                    p.execute()
                    return
                except WatchError:
                    continue

    def _stale(self, series_keys: set[str]) -> set[str]:
        """Which of these series keys no longer exist (expired: they count no more)."""
        names = sorted(series_keys)
        if not names:
            return set()
        with self.r.pipeline(transaction=False) as p:
            for name in names:
                p.exists(name)
            there = p.execute()
        return {n for n, e in zip(names, there, strict=True) if not e}

    def samples(self) -> dict[SeriesKey, list[tuple[float, float]]]:
        """Every series with its samples, oldest first. A key that does not parse and a
        sample that does not decode are skipped (the key forgotten), never raised."""
        raw = sorted(cast(set[bytes], self.r.smembers(keys.SIGNALS)))
        names = [m.decode(errors="replace") for m in raw]  # (not UTF-8: does not parse)
        parsed = {n: keys.parse_signal(n) for n in names}
        bad = [m for m, n in zip(raw, names, strict=True) if parsed[n] is None]
        if bad:
            log.warning("forgetting %d signal keys that do not parse, e.g. %r", len(bad), bad[0])
            self.r.srem(keys.SIGNALS, *bad)
        good = [n for n in names if parsed[n] is not None]
        with self.r.pipeline(transaction=False) as p:
            for name in good:
                p.zrange(name, 0, -1)
            rows = p.execute(raise_on_error=False)
        out = {}
        for name, members in zip(good, rows, strict=True):
            parts = parsed[name]
            assert parts is not None
            if isinstance(members, Exception):  # another type under the key: not a series
                log.warning("signal key %r is not a sorted set: %s", name, members)
                continue
            if not members:
                self.r.srem(keys.SIGNALS, name)
                continue
            series, cluster, service, region = parts
            out[SeriesKey(series=series, cluster=cluster, service=service,
                          region=region)] = _decoded(name, members)
        return out

    def note_move_start(self, service: str, ts: float) -> None:
        self.r.set(keys.last_move(service), repr(ts), ex=7 * 24 * 3600)

    def last_moves(self, services: list[str]) -> dict[str, float]:
        if not services:
            return {}
        raws = cast(list[bytes | None], self.r.mget([keys.last_move(s) for s in services]))
        out = {}
        for s, r in zip(services, raws, strict=True):
            try:
                ts = float(r) if r else math.nan
            except ValueError:
                ts = math.nan
            if math.isfinite(ts):
                out[s] = ts
            elif r:
                log.warning("last move time of %r does not read as a time: %r", s, r)
        return out

    # --- policies ---

    def put_policy(self, policy: Policy) -> None:
        self.r.set(keys.policy(policy.id), pack(policy.to_dict()))
        self.r.sadd(keys.POLICIES, policy.id)

    def get_policy(self, policy_id: str) -> Policy | None:
        """The policy, or None: none stored, or one that no longer reads as a policy (logged;
        creating the policy again replaces it)."""
        if not keys.safe_policy_id(policy_id):
            return None
        raw = cast(bytes | None, self.r.get(keys.policy(policy_id)))
        if not raw:
            return None
        try:
            return Policy.from_dict(unpack(raw))
        except UNREADABLE as exc:
            log.warning("stored policy %r does not read as a policy, skipped: %s", policy_id,
                        exc)
            return None

    def policies(self) -> list[Policy]:
        return [p for p in (self.get_policy(i) for i in self._names(keys.POLICIES))
                if p is not None]

    def delete_policy(self, policy_id: str) -> bool:
        with self.r.pipeline() as p:
            p.delete(keys.policy(policy_id))
            p.srem(keys.POLICIES, policy_id)
            deleted, _ = p.execute()
        return bool(deleted)

    def count_policy_tick(self) -> int:
        """Count a finished policy tick (so a caller can wait for the next one)."""
        return int(self.r.incr(keys.POLICY_TICKS))

    def policy_ticks(self) -> int:
        raw = cast(bytes | None, self.r.get(keys.POLICY_TICKS))
        return int(raw) if raw else 0

    # --- rebalancing ---

    def rebalance_config(self) -> Constraints:
        """The stored constraints; the defaults when none are, or they no longer read."""
        raw = cast(bytes | None, self.r.get(keys.REBALANCE_CONFIG))
        try:
            return constraints_from_dict(unpack(raw) if raw else {})
        except UNREADABLE as exc:
            log.warning("the stored rebalance configuration does not read, defaults used: %s",
                        exc)
            return constraints_from_dict({})

    def put_rebalance_config(self, constraints: Constraints) -> None:
        self.r.set(keys.REBALANCE_CONFIG, pack(constraints_to_dict(constraints)))

    def last_rebalance(self) -> RebalanceRun | None:
        """The last scheduled run, or None: none yet, or a record that no longer reads."""
        raw = cast(bytes | None, self.r.get(keys.REBALANCE_LAST))
        if not raw:
            return None
        try:
            return RebalanceRun.from_dict(unpack(raw))
        except UNREADABLE as exc:
            log.warning("the last rebalance run's record does not read: %s", exc)
            return None

    def put_last_rebalance(self, run: RebalanceRun) -> None:
        self.r.set(keys.REBALANCE_LAST, pack(run.to_dict()))


def _describe(owner: str) -> str:
    kind, _, name = owner[len(keys.SIGNAL_OWNERS_PREFIX):].partition(":")
    return f"{kind} {name!r}"


def _decoded(name: str, members: Sequence[bytes]) -> list[tuple[float, float]]:
    """The ``(ts, value)`` samples of a series, skipping any member that does not decode to
    two finite numbers."""
    out = []
    for m in members:
        try:
            ts, v = unpack(m)
            sample = (float(ts), float(v))
        except UNREADABLE:
            log.warning("a sample of %r does not decode, skipped", name)
            continue
        if math.isfinite(sample[0]) and math.isfinite(sample[1]):
            out.append(sample)
    return out
