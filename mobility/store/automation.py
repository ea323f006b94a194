"""Signal series, policies, the rebalancer's configuration and its last run.

A series is a sorted set of ``(timestamp, value)`` samples under a key built from its
:class:`~mobility.policies.SeriesKey`; a bounded recent window is kept per series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from mobility import keys
from mobility.policies import Policy, SeriesKey
from mobility.rebalancing import Constraints, MaintenanceWindow, Plan
from mobility.store.base import StoreBase, pack, unpack

DEFAULT_MAX_MOVES = 4  # the rebalancer's cap on moves per run, until the API sets one


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
                    keep_samples: int) -> None:
        """Append ``(series, timestamp, value)`` samples; each series keeps its last
        ``keep_s`` seconds, at most ``keep_samples`` samples (a bounded recent window)."""
        newest: dict[str, float] = {}
        with self.r.pipeline(transaction=False) as p:
            for sk, ts, value in samples:
                key = keys.signal(sk.series, sk.cluster, sk.service, sk.region)
                p.zadd(key, {pack([ts, value]): ts})
                newest[key] = max(ts, newest.get(key, ts))
                p.sadd(keys.SIGNALS, key)
            for key, ts in newest.items():
                p.zremrangebyscore(key, "-inf", ts - keep_s)
                p.zremrangebyrank(key, 0, -keep_samples - 1)
                p.expire(key, int(keep_s) + 60)
            p.execute()

    def samples(self) -> dict[SeriesKey, list[tuple[float, float]]]:
        """Every series with its samples, oldest first."""
        names = self._names(keys.SIGNALS)
        with self.r.pipeline(transaction=False) as p:
            for name in names:
                p.zrange(name, 0, -1)
            rows = p.execute()
        out = {}
        for name, members in zip(names, rows, strict=True):
            if not members:
                self.r.srem(keys.SIGNALS, name)
                continue
            series, cluster, service, region = name[len(keys.SIGNAL_PREFIX):].split("|")
            out[SeriesKey(series=series, cluster=cluster, service=service or None,
                          region=region or None)] = [
                (float(ts), float(v)) for ts, v in (unpack(m) for m in members)]
        return out

    def note_move_start(self, service: str, ts: float) -> None:
        self.r.set(keys.last_move(service), repr(ts), ex=7 * 24 * 3600)

    def last_moves(self, services: list[str]) -> dict[str, float]:
        if not services:
            return {}
        raws = cast(list[bytes | None], self.r.mget([keys.last_move(s) for s in services]))
        return {s: float(r) for s, r in zip(services, raws, strict=True) if r}

    # --- policies ---

    def put_policy(self, policy: Policy) -> None:
        self.r.set(keys.policy(policy.id), pack(policy.to_dict()))
        self.r.sadd(keys.POLICIES, policy.id)

    def get_policy(self, policy_id: str) -> Policy | None:
        raw = cast(bytes | None, self.r.get(keys.policy(policy_id)))
        return Policy.from_dict(unpack(raw)) if raw else None

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
        raw = cast(bytes | None, self.r.get(keys.REBALANCE_CONFIG))
        return constraints_from_dict(unpack(raw) if raw else {})

    def put_rebalance_config(self, constraints: Constraints) -> None:
        self.r.set(keys.REBALANCE_CONFIG, pack(constraints_to_dict(constraints)))

    def last_rebalance(self) -> RebalanceRun | None:
        raw = cast(bytes | None, self.r.get(keys.REBALANCE_LAST))
        return RebalanceRun.from_dict(unpack(raw)) if raw else None

    def put_last_rebalance(self, run: RebalanceRun) -> None:
        self.r.set(keys.REBALANCE_LAST, pack(run.to_dict()))
