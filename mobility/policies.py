"""Edge-offloading policies: when a signal stays past a threshold, move the service.

A policy reads like "when p95 ``latency_ms`` from region ``eu-west`` to ``video-*`` stays above
20 ms for 30 s, move the service to the nearest cluster labelled ``tier=edge`` that has
capacity". This module holds the policy model, its validation and the engine that turns
policies plus recent signals into decisions.

It is pure, and that is the point: the caller reads the signal windows, placements, free
capacities and last move times (from Redis), calls :func:`evaluate`, and starts the moves the
decisions ask for. Nothing here does I/O or reads the clock, so the anti-flapping rules can be
tested exhaustively (see ``tests/unit/test_policies.py``).

Why one module of over 700 lines: the model, its validation and the evaluator share the
hysteresis and cooldown rules; split, each half would restate them, and the property tests
check them as one.

How a condition is judged
-------------------------
Samples are read from one series: ``SeriesKey(series, cluster=<where the service runs now>,
service=<the service>, region=<the policy's region>)``. Only samples taken after the service's
last move count (older ones describe a placement that no longer exists) and none from the
future (``ts > now``: clock skew; they count on a later evaluation).

At each sample's time ``t`` the aggregate (``p95``, ``mean``, ``max``...) is computed over the
samples in ``(t - window_s, t]``. Percentiles use the nearest-rank method, so the value is
always one that was measured. The aggregate then drives a two-threshold (Schmitt) trigger:

* it *enters* when the aggregate crosses ``threshold`` (``>`` or ``<``, strictly);
* it *leaves* only when the aggregate falls back to ``clear_threshold`` (``threshold`` minus
  ``hysteresis`` for ``>``, plus it for ``<``), so noise inside the band neither fires the
  trigger nor restarts its clock.

The condition holds once the trigger has stayed entered for ``duration_s``, measured from the
first sample that entered it to the newest sample (not to ``now``: a gap in the data is not
evidence). Newest data older than ``stale_after_s`` counts as no data.

What keeps a policy from flapping
---------------------------------
* **Cooldown**: no policy moves a service whose last move (by anyone: API, policy, rebalance)
  started less than the policy's ``cooldown_s`` ago. The caller passes those times in
  ``last_moves``; this alone bounds a signal oscillating around the threshold to one move per
  cooldown.
* **Fresh evidence**: after a move the condition must hold again for ``duration_s`` on samples
  taken after that move.
* **Hysteresis** (above) and **nearer only**: a service is not moved to a cluster that is no
  nearer than the one it runs in, when the ranking knows both.
* **Capacity**: a target must have ``free_capacity >= demand``; capacity promised to an
  earlier decision of the same evaluation is not offered twice. A cluster missing from
  ``free_capacity`` has none.
* **One decision per service per evaluation**: policies are evaluated in ``id`` order; a
  later policy that would also move the service reports ``superseded``.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Final, Literal, Protocol, get_args

from mobility.errors import Invalid

Aggregate = Literal["p50", "p90", "p95", "p99", "mean", "max", "min"]
Comparator = Literal[">", "<"]
NearestBy = Literal["distance", "signal", "capacity"]
Sample = tuple[float, float]  # (timestamp in seconds since the epoch, value)

AGGREGATES: Final[frozenset[str]] = frozenset(get_args(Aggregate))
COMPARATORS: Final[frozenset[str]] = frozenset(get_args(Comparator))
NEAREST_BY: Final[frozenset[str]] = frozenset(get_args(NearestBy))
_PERCENTILES: Final[dict[str, float]] = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
# Ids end up in Redis keys and URLs: keep them short and free of separators.
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_DEMAND: Final = 1.0


# --------------------------------------------------------------------------- validation helpers


def _number(name: str, value: object, *, minimum: float | None = None,
            positive: bool = False) -> float:
    """A finite float, refusing bools (``True`` is an int to Python, never a threshold)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise Invalid(f"{name} must be a finite number, got {value!r}")
    if positive and v <= 0:
        raise Invalid(f"{name} must be greater than 0, got {value!r}")
    if minimum is not None and v < minimum:
        raise Invalid(f"{name} must be at least {minimum:g}, got {value!r}")
    return v


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{name} must be a non-empty string, got {value!r}")
    return value


def _choice(name: str, value: object, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise Invalid(f"{name} must be one of {', '.join(sorted(allowed))}; got {value!r}")
    assert isinstance(value, str)
    return value


def _fmt(x: float) -> str:
    return f"{round(x, 3):g}"


# --------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Condition:
    """When a policy fires: ``aggregate(series) comparator threshold``, held for ``duration_s``.

    See the module docstring for how the window, the hysteresis band and staleness combine.
    Invalid values raise :class:`mobility.errors.Invalid` at construction, so a Condition that
    exists can be evaluated without further checks.
    """

    series: str
    aggregate: Aggregate
    comparator: Comparator
    threshold: float
    duration_s: float
    region: str | None = None
    window_s: float = 10.0
    hysteresis: float = 0.0
    stale_after_s: float = 15.0

    def __post_init__(self) -> None:
        _text("condition.series", self.series)
        if self.region is not None:
            _text("condition.region", self.region)
        _choice("condition.aggregate", self.aggregate, AGGREGATES)
        _choice("condition.comparator", self.comparator, COMPARATORS)
        _number("condition.threshold", self.threshold)
        _number("condition.duration_s", self.duration_s, minimum=0)
        _number("condition.window_s", self.window_s, positive=True)
        _number("condition.hysteresis", self.hysteresis, minimum=0)
        _number("condition.stale_after_s", self.stale_after_s, positive=True)
        if not math.isfinite(self.clear_threshold):
            raise Invalid("condition.threshold and condition.hysteresis are too large together")

    @property
    def clear_threshold(self) -> float:
        """Where the trigger leaves: the threshold moved back by the hysteresis margin."""
        if self.comparator == ">":
            return self.threshold - self.hysteresis
        return self.threshold + self.hysteresis

    def enters(self, value: float) -> bool:
        return value > self.threshold if self.comparator == ">" else value < self.threshold

    def leaves(self, value: float) -> bool:
        c = self.clear_threshold
        return value <= c if self.comparator == ">" else value >= c

    def describe(self) -> str:
        where = f" from {self.region}" if self.region else ""
        return f"{self.aggregate} {self.series}{where} {self.comparator} {_fmt(self.threshold)}"


@dataclass(frozen=True)
class Target:
    """Where a policy moves a service.

    ``labels``: every pair must be among the cluster's labels (empty: any cluster).
    ``nearest_by`` ranks the labelled clusters that have capacity:

    * ``"distance"``: the static ``distances`` map (cluster -> distance from the policy's
      users; any unit, lower is nearer); a cluster missing from it is not a candidate.
    * ``"signal"``: the cluster-level series ``series`` (``SeriesKey(series, cluster,
      service=None, region=<the condition's region>)``, e.g. a probe's ``rtt_ms`` from the
      region), aggregated like the condition over its last window; a cluster without fresh
      data is not a candidate, since "nearest" cannot be claimed for it.
    * ``"capacity"``: the most free capacity first (no notion of distance).

    Ties go to the cluster name, so a decision never depends on dict order.
    """

    labels: Mapping[str, str] = field(default_factory=dict)
    nearest_by: NearestBy = "capacity"
    series: str | None = None
    distances: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Mapping):
            raise Invalid(f"target.labels must be a mapping, got {self.labels!r}")
        for k, v in self.labels.items():
            _text("target.labels key", k)
            _text(f"target.labels[{k!r}]", v)
        _choice("target.nearest_by", self.nearest_by, NEAREST_BY)
        if not isinstance(self.distances, Mapping):
            raise Invalid(f"target.distances must be a mapping, got {self.distances!r}")
        for name, dist in self.distances.items():
            _text("target.distances key", name)
            _number(f"target.distances[{name!r}]", dist, minimum=0)
        if self.nearest_by == "signal":
            _text("target.series (needed when nearest_by is 'signal')", self.series)
        elif self.series is not None:
            raise Invalid("target.series is only used when nearest_by is 'signal'")
        if self.nearest_by == "distance" and not self.distances:
            raise Invalid("target.distances must list clusters when nearest_by is 'distance'")
        # Copies, so a caller mutating its dict cannot change a validated policy.
        object.__setattr__(self, "labels", dict(self.labels))
        object.__setattr__(
            self, "distances", {k: float(v) for k, v in self.distances.items()}
        )

    def describe(self) -> str:
        if not self.labels:
            return "any cluster"
        return "clusters labelled " + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))


@dataclass(frozen=True)
class Policy:
    """One rule: which services, which condition, where to, and how often at most.

    ``services`` are shell-style patterns (``fnmatch``, case-sensitive) over service names.
    ``cooldown_s`` counts from the service's last move, whoever started it.
    """

    id: str
    name: str
    services: tuple[str, ...]
    condition: Condition
    target: Target
    cooldown_s: float = 300.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise Invalid(
                f"policy id must be 1-64 letters, digits, '.', '_' or '-' (starting with a "
                f"letter or digit), got {self.id!r}"
            )
        if not isinstance(self.name, str):
            raise Invalid(f"policy {self.id!r}: name must be a string")
        if isinstance(self.services, str) or not isinstance(self.services, Sequence):
            raise Invalid(f"policy {self.id!r}: services must be a list of name patterns")
        if not self.services:
            raise Invalid(f"policy {self.id!r}: services must name at least one pattern")
        for pat in self.services:
            _text(f"policy {self.id!r}: services entry", pat)
        object.__setattr__(self, "services", tuple(self.services))
        if not isinstance(self.condition, Condition):
            raise Invalid(f"policy {self.id!r}: condition must be a Condition")
        if not isinstance(self.target, Target):
            raise Invalid(f"policy {self.id!r}: target must be a Target")
        _number(f"policy {self.id!r}: cooldown_s", self.cooldown_s, minimum=0)
        if not isinstance(self.enabled, bool):
            raise Invalid(f"policy {self.id!r}: enabled must be true or false")

    def selects(self, service: str) -> bool:
        return any(fnmatchcase(service, pat) for pat in self.services)

    def to_dict(self) -> dict[str, Any]:
        c, t = self.condition, self.target
        return {
            "id": self.id,
            "name": self.name,
            "services": list(self.services),
            "condition": {
                "series": c.series, "aggregate": c.aggregate, "comparator": c.comparator,
                "threshold": c.threshold, "duration_s": c.duration_s, "region": c.region,
                "window_s": c.window_s, "hysteresis": c.hysteresis,
                "stale_after_s": c.stale_after_s,
            },
            "target": {
                "labels": dict(t.labels), "nearest_by": t.nearest_by, "series": t.series,
                "distances": dict(t.distances),
            },
            "cooldown_s": self.cooldown_s,
            "enabled": self.enabled,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        """Parse a stored or submitted policy; every problem is an :class:`Invalid`.

        Unknown keys are refused rather than ignored: a misspelt ``hysterisis`` silently
        dropped would give a policy that flaps while its author believes it cannot.
        """
        if not isinstance(d, Mapping):
            raise Invalid(f"a policy must be an object, got {type(d).__name__}")
        pid = d.get("id")
        prefix = f"policy {pid!r}: " if isinstance(pid, str) else "policy: "
        try:
            _only(d, {"id", "name", "services", "condition", "target", "cooldown_s",
                      "enabled"}, "policy")
            cd = _mapping(d, "condition")
            _only(cd, {f.name for f in dataclasses.fields(Condition)}, "condition")
            td = _mapping(d, "target", required=False)
            _only(td, {f.name for f in dataclasses.fields(Target)}, "target")
            for key in ("series", "aggregate", "comparator", "threshold", "duration_s"):
                if key not in cd:
                    raise Invalid(f"condition.{key} is required")
            condition = Condition(**cd)
            target = Target(**td)
            if "id" not in d:
                raise Invalid("id is required")
            if "services" not in d:
                raise Invalid("services is required")
            services = d["services"]
            if isinstance(services, str) or not isinstance(services, Sequence):
                raise Invalid("services must be a list of name patterns")
            return cls(
                id=d["id"], name=d.get("name", d["id"]), services=tuple(services),
                condition=condition, target=target,
                cooldown_s=d.get("cooldown_s", 300.0), enabled=d.get("enabled", True),
            )
        except Invalid as e:
            msg = str(e)
            raise Invalid(msg if msg.startswith("policy ") else prefix + msg) from e
        except TypeError as e:  # a wrong shape the checks above did not foresee
            raise Invalid(prefix + str(e)) from e


def _only(d: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise Invalid(
            f"unknown {what} field(s): {', '.join(map(str, unknown))} "
            f"(known: {', '.join(sorted(allowed))})"
        )


def _mapping(d: Mapping[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    if key not in d:
        if required:
            raise Invalid(f"{key} is required")
        return {}
    v = d[key]
    if not isinstance(v, Mapping):
        raise Invalid(f"{key} must be an object, got {v!r}")
    return dict(v)


# ------------------------------------------------------------------------------------- signals


@dataclass(frozen=True, order=True)
class SeriesKey:
    """Which series a list of samples belongs to.

    A service-level series (latency to the service from a region, its CPU...) names the
    service and the cluster it was measured in; a cluster-level series (probe RTT from a
    region to the cluster, free capacity) has ``service=None``.
    """

    series: str
    cluster: str
    service: str | None = None
    region: str | None = None


Signals = Mapping[SeriesKey, Sequence[Sample]]


def _aggregate(sorted_values: Sequence[float], how: str) -> float:
    n = len(sorted_values)
    if how == "mean":
        return math.fsum(sorted_values) / n
    if how == "max":
        return sorted_values[-1]
    if how == "min":
        return sorted_values[0]
    rank = math.ceil(_PERCENTILES[how] * n)  # nearest-rank percentile
    return sorted_values[max(rank, 1) - 1]


def _clean(samples: Iterable[Sample], *, after: float | None, now: float) -> list[Sample]:
    """Finite samples in ``(after, now]``, oldest first."""
    lo = -math.inf if after is None else after
    out = [
        (float(ts), float(v)) for ts, v in samples
        if lo < ts <= now and math.isfinite(ts) and math.isfinite(v)
    ]
    out.sort()
    return out


@dataclass(frozen=True)
class Reading:
    """What the engine read from the condition's series: the evidence behind a decision.

    ``value`` is the aggregate at the newest sample (``at``) over ``samples`` samples;
    ``held_s`` how long the trigger has stayed entered (0 when it is not), since ``since``.
    Recorded on a policy-started move so a person can see why it moved.
    """

    series: str
    cluster: str
    region: str | None
    aggregate: str
    comparator: str
    threshold: float
    clear_threshold: float
    duration_s: float
    value: float
    at: float
    samples: int
    held_s: float
    since: float | None

    @property
    def entered(self) -> bool:
        return self.since is not None

    @property
    def holds(self) -> bool:
        return self.entered and self.held_s >= self.duration_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_condition(
    condition: Condition, samples: Sequence[Sample], *, cluster: str, after: float | None,
    now: float,
) -> Reading | str:
    """Run the condition's trigger over one series; a Reading, or why there is none.

    Walks forward from the last sample at or before ``newest - duration_s`` (earlier history
    cannot change whether the condition held for ``duration_s``), keeping a sorted rolling
    window, so the cost is bounded by the samples in ``duration_s + window_s``.
    """
    pts = _clean(samples, after=after, now=now)
    if not pts:
        return "no samples" + (" since the service's last move" if after is not None else "")
    latest = pts[-1][0]
    if now - latest > condition.stale_after_s:
        return (f"newest sample is {_fmt(now - latest)} s old (stale after "
                f"{_fmt(condition.stale_after_s)} s)")
    times = [ts for ts, _ in pts]
    first = max(bisect.bisect_right(times, latest - condition.duration_s) - 1, 0)
    lo = bisect.bisect_right(times, times[first] - condition.window_s)
    window = sorted(v for _, v in pts[lo:first])
    since: float | None = None
    value = math.nan
    for i in range(first, len(pts)):
        t, v = pts[i]
        bisect.insort(window, v)
        while times[lo] <= t - condition.window_s:
            del window[bisect.bisect_left(window, pts[lo][1])]
            lo += 1
        value = _aggregate(window, condition.aggregate)
        if since is None:
            if condition.enters(value):
                since = t
        elif condition.leaves(value):
            since = None
    return Reading(
        series=condition.series, cluster=cluster, region=condition.region,
        aggregate=condition.aggregate, comparator=condition.comparator,
        threshold=condition.threshold, clear_threshold=condition.clear_threshold,
        duration_s=condition.duration_s, value=value, at=latest, samples=len(window),
        held_s=0.0 if since is None else latest - since, since=since,
    )


def latest_aggregate(
    samples: Sequence[Sample], *, aggregate: str, window_s: float, stale_after_s: float,
    now: float,
) -> float | None:
    """The aggregate over the newest ``window_s`` of a series, None when there is no fresh data.

    Used to rank target clusters by a measured distance (e.g. probe RTT from a region).
    """
    pts = _clean(samples, after=None, now=now)
    if not pts or now - pts[-1][0] > stale_after_s:
        return None
    latest = pts[-1][0]
    values = sorted(v for ts, v in pts if ts > latest - window_s)
    return _aggregate(values, aggregate)


# ------------------------------------------------------------------------------------ decisions


class Outcome(StrEnum):
    """Why a decision is what it is; stable strings the API and the dry run can show."""

    MOVE = "move"
    DISABLED = "disabled"
    NO_SERVICE = "no_service"  # the policy's patterns match no running service
    MOVING = "already_moving"
    SUPERSEDED = "superseded"  # an earlier policy moves the service in this evaluation
    NO_SIGNAL = "no_signal"
    NOT_MET = "condition_not_met"
    TOO_SHORT = "held_too_short"
    COOLDOWN = "cooldown"
    NO_TARGET = "no_target"
    NOT_NEARER = "already_nearest"


@dataclass(frozen=True)
class Decision:
    """One (policy, service) verdict: a move (``to_cluster`` set) or why not.

    ``reading`` is the signal evidence when the series could be read; ``target_distance`` and
    ``current_distance`` are the ranking values (distance, measured signal, or free capacity)
    when the target step got that far.
    """

    policy_id: str
    service: str | None
    outcome: Outcome
    reason: str
    from_cluster: str | None = None
    to_cluster: str | None = None
    reading: Reading | None = None
    target_distance: float | None = None
    current_distance: float | None = None

    @property
    def moves(self) -> bool:
        return self.outcome is Outcome.MOVE

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_id": self.policy_id,
            "service": self.service,
            "outcome": str(self.outcome),
            "moves": self.moves,
            "reason": self.reason,
            "from_cluster": self.from_cluster,
            "to_cluster": self.to_cluster,
            "reading": self.reading.to_dict() if self.reading else None,
            "target_distance": self.target_distance,
            "current_distance": self.current_distance,
        }


class _Verdict(Protocol):
    """The shape of ``_decide``'s local helper that fills in policy, service and source."""

    def __call__(self, outcome: Outcome, reason: str, **kw: Any) -> Decision: ...


@dataclass
class _Pass:
    """What one evaluation has promised so far: capacity reserved and services taken."""

    reserved: dict[str, float] = field(default_factory=dict)
    moved_by: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _World:
    signals: Signals
    placements: Mapping[str, str]
    cluster_labels: Mapping[str, Mapping[str, str]]
    free_capacity: Mapping[str, float]
    last_moves: Mapping[str, float]
    demands: Mapping[str, float]
    moving: Collection[str]
    now: float


def evaluate(
    policies: Iterable[Policy],
    signals: Signals,
    *,
    placements: Mapping[str, str],
    cluster_labels: Mapping[str, Mapping[str, str]],
    free_capacity: Mapping[str, float],
    last_moves: Mapping[str, float],
    now: float,
    demands: Mapping[str, float] | None = None,
    moving: Collection[str] = (),
) -> list[Decision]:
    """Every policy against every running service it selects: what to move, and why not.

    ``placements``: service -> cluster it runs in (services not running are left out).
    ``cluster_labels``: cluster -> its labels; only these clusters can be targets.
    ``free_capacity``: cluster -> free capacity units (missing: none).
    ``last_moves``: service -> start time of its last move, whoever started it.
    ``demands``: service -> capacity units it needs (missing: 1).
    ``moving``: services with a move in progress (never decided again until it ends).

    Returns one Decision per (policy, selected service), policies in ``id`` order and
    services by name, plus one ``no_service`` decision per policy that selects nothing. The
    decisions with ``moves`` set are the ones to start; all of them are the dry run.
    """
    now = _number("now", now)
    for svc, units in (demands or {}).items():
        _number(f"demand of service {svc!r}", units, positive=True)
    ordered = sorted(policies, key=lambda p: p.id)
    seen: set[str] = set()
    for p in ordered:
        if p.id in seen:
            raise Invalid(f"two policies share the id {p.id!r}")
        seen.add(p.id)
    world = _World(
        signals=signals, placements=placements, cluster_labels=cluster_labels,
        free_capacity=free_capacity, last_moves=last_moves, demands=demands or {},
        moving=frozenset(moving), now=now,
    )
    running = sorted(placements)
    state = _Pass()
    out: list[Decision] = []
    for policy in ordered:
        selected = [s for s in running if policy.selects(s)]
        if not selected:
            out.append(Decision(
                policy_id=policy.id, service=None, outcome=Outcome.NO_SERVICE,
                reason=f"no running service matches {', '.join(policy.services)}",
            ))
            continue
        out.extend(_decide(policy, s, world, state) for s in selected)
    return out


def _decide(policy: Policy, service: str, w: _World, state: _Pass) -> Decision:
    cluster = w.placements[service]

    def verdict(outcome: Outcome, reason: str, **kw: Any) -> Decision:
        return Decision(policy_id=policy.id, service=service, outcome=outcome, reason=reason,
                        from_cluster=cluster, **kw)

    if not policy.enabled:
        return verdict(Outcome.DISABLED, "policy is disabled")
    if service in w.moving:
        return verdict(Outcome.MOVING, "a move of this service is already in progress")
    if service in state.moved_by:
        return verdict(Outcome.SUPERSEDED,
                       f"policy {state.moved_by[service]!r} already moves it in this evaluation")
    cond = policy.condition
    last = w.last_moves.get(service)
    key = SeriesKey(cond.series, cluster, service, cond.region)
    got = read_condition(cond, w.signals.get(key, ()), cluster=cluster, after=last, now=w.now)
    reading = got if isinstance(got, Reading) else None
    if last is not None and w.now - last < policy.cooldown_s:
        left = policy.cooldown_s - (w.now - last)
        return verdict(
            Outcome.COOLDOWN,
            f"moved {_fmt(w.now - last)} s ago; cooldown {_fmt(policy.cooldown_s)} s "
            f"({_fmt(left)} s left)",
            reading=reading,
        )
    if reading is None:
        assert isinstance(got, str)
        where = f" from {cond.region}" if cond.region else ""
        return verdict(Outcome.NO_SIGNAL, f"{cond.series}{where} in {cluster}: {got}")
    now_is = f"{cond.aggregate} {cond.series} = {_fmt(reading.value)}"
    if not reading.entered:
        return verdict(
            Outcome.NOT_MET,
            f"condition not met: {now_is}, needs {cond.comparator} {_fmt(cond.threshold)}",
            reading=reading,
        )
    if not reading.holds:
        return verdict(
            Outcome.TOO_SHORT,
            f"condition held only {_fmt(reading.held_s)} s of {_fmt(cond.duration_s)} s "
            f"({now_is})",
            reading=reading,
        )
    return _choose_target(policy, service, cluster, reading, w, state, verdict)


def _choose_target(
    policy: Policy, service: str, cluster: str, reading: Reading, w: _World, state: _Pass,
    verdict: _Verdict,
) -> Decision:
    tgt, cond = policy.target, policy.condition
    held = (f"{cond.describe()} for {_fmt(reading.held_s)} s "
            f"(now {_fmt(reading.value)})")
    demand = float(w.demands.get(service, DEFAULT_DEMAND))
    labelled = sorted(
        c for c, labels in w.cluster_labels.items()
        if c != cluster and all(labels.get(k) == v for k, v in tgt.labels.items())
    )
    if not labelled:
        return verdict(Outcome.NO_TARGET, f"{held}, but no other cluster among "
                                          f"{tgt.describe()}", reading=reading)

    def free(c: str) -> float | None:
        f = w.free_capacity.get(c)
        return None if f is None or not math.isfinite(f) else f - state.reserved.get(c, 0.0)

    fitting = [c for c in labelled if (free(c) or 0.0) >= demand and (free(c) or 0.0) > 0]
    if not fitting:
        shown = ", ".join(
            f"{c}: {'unknown' if free(c) is None else _fmt(free(c) or 0.0)}"
            for c in labelled[:5]
        ) + (", ..." if len(labelled) > 5 else "")
        return verdict(
            Outcome.NO_TARGET,
            f"{held}, but none of {tgt.describe()} has capacity for {_fmt(demand)} "
            f"unit(s) ({shown} free)",
            reading=reading,
        )

    def rank(c: str) -> float | None:
        if tgt.nearest_by == "distance":
            return tgt.distances.get(c)
        if tgt.nearest_by == "signal":
            assert tgt.series is not None
            return latest_aggregate(
                w.signals.get(SeriesKey(tgt.series, c, None, cond.region), ()),
                aggregate=cond.aggregate, window_s=cond.window_s,
                stale_after_s=cond.stale_after_s, now=w.now,
            )
        f = free(c)
        return None if f is None else -f  # most free capacity ranks first

    ranked = sorted((r, c) for c in fitting if (r := rank(c)) is not None)
    if not ranked:
        by = "distance" if tgt.nearest_by == "distance" else f"fresh {tgt.series} samples"
        return verdict(
            Outcome.NO_TARGET,
            f"{held}, but no cluster with capacity has a known {by} "
            f"({', '.join(fitting[:5])})",
            reading=reading,
        )
    best_rank, best = ranked[0]
    current = rank(cluster) if tgt.nearest_by != "capacity" else None
    if current is not None and best_rank >= current:
        return verdict(
            Outcome.NOT_NEARER,
            f"{held}, but the nearest candidate {best} ({_fmt(best_rank)}) is no nearer "
            f"than {cluster} ({_fmt(current)})",
            reading=reading, target_distance=best_rank, current_distance=current,
        )
    state.reserved[best] = state.reserved.get(best, 0.0) + demand
    state.moved_by[service] = policy.id
    how = {"distance": "nearest", "signal": f"nearest by {tgt.series}",
           "capacity": "most free capacity"}[tgt.nearest_by]
    return verdict(
        Outcome.MOVE,
        f"{held}; moving to {best} ({how} among {tgt.describe()} with capacity)",
        to_cluster=best, reading=reading,
        target_distance=-best_rank if tgt.nearest_by == "capacity" else best_rank,
        current_distance=current,
    )
