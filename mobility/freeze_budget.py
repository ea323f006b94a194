"""Predicting a stateful move's freeze window before it freezes: the downtime budget.

A pre-copy move freezes its source only for the last delta: what the application wrote since
the last pre-copy round began, shipped while nobody writes, plus a fixed cost (freezing, the
round's own set-up, resuming the target, switching the peers). Both halves can be measured
before the freeze, from the pre-copy rounds themselves:

- the *throughput*: each round's bytes against its duration; a least-squares line
  ``seconds = round_s + bytes / throughput`` also gives a round's own fixed cost;
- the *dirty rate*: a round ships what was written after the previous round's snapshot, so
  the last round's bytes over the time between the last two rounds' starts;
- the *delta if frozen at t*: the dirty rate times the time from the last round's start to t
  (at most the whole state: a delta never exceeds what the first round shipped).

So a move asked to keep its freeze under ``max_freeze_ms`` can tell, before freezing, whether
it would, and wait (with more rounds, which keep the delta small) or give up while the source
still serves. Pure functions, so the arithmetic is tested without a lab.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mobility.errors import Invalid

# Bounds of a move's request (the API's schema and the engine check the same ones). A wait
# runs inside SYNC's task: ten minutes at most keeps a phase far below the broker's visibility
# timeout (workers.app), past which it would be redelivered.
MAX_FREEZE_MS_MAX = 60_000.0
DEADLINE_S_MAX = 600.0
DEADLINE_S_DEFAULT = 30.0  # how long a move with a budget waits for it to fit, unless told


def check_request(*, max_freeze_ms: float | None, deadline_s: float | None,
                  strategy: str) -> float | None:
    """A move request's budget checked (raises :class:`Invalid`); returns the deadline to
    record: the default when a budget comes without one, None without a budget."""
    if max_freeze_ms is None:
        if deadline_s is not None:
            raise Invalid("deadline_s is how long to wait for max_freeze_ms to fit: "
                          "give max_freeze_ms too")
        return None
    if not 0 < max_freeze_ms <= MAX_FREEZE_MS_MAX:
        raise Invalid(f"max_freeze_ms must be above 0 and at most {MAX_FREEZE_MS_MAX:g}")
    if strategy != "precopy":
        raise Invalid(f"max_freeze_ms needs the precopy strategy: {strategy} freezes for the "
                      "whole copy, with no pre-copy round to predict it from")
    if deadline_s is None:
        return DEADLINE_S_DEFAULT
    if not 0 <= deadline_s <= DEADLINE_S_MAX:
        raise Invalid(f"deadline_s must be from 0 to {DEADLINE_S_MAX:g}")
    return float(deadline_s)


@dataclass(frozen=True)
class Round:
    """One pre-copy round as the orchestrator saw it: the bytes it shipped, when it started
    (a monotonic clock; the source takes its snapshot version then) and how long it took."""

    bytes: int
    started: float
    seconds: float


@dataclass(frozen=True)
class Prediction:
    """The freeze window a CUTOVER starting ``lag_s`` from now would have, and its parts."""

    freeze_ms: float
    delta_bytes: float
    dirty_bps: float  # bytes re-dirtied per second
    throughput_bps: float  # bytes per second while a round streams (0: nothing measured)
    round_ms: float  # a round's own fixed cost, from the fit
    overhead_ms: float  # freeze, resume and switch, beyond the final round

    def fits(self, budget_ms: float) -> bool:
        return self.freeze_ms <= budget_ms

    def detail(self) -> str:
        """The event's text: what was predicted, and from what."""
        return (f"predicted {self.freeze_ms:.1f} ms: delta {self.delta_bytes:.0f} bytes at "
                f"{self.throughput_bps / 1e6:.2f} MB/s, dirty rate "
                f"{self.dirty_bps / 1e6:.3f} MB/s, fixed {self.round_ms + self.overhead_ms:.1f} "
                f"ms (round {self.round_ms:.1f} + overhead {self.overhead_ms:.1f})")


def throughput(rounds: Sequence[Round]) -> tuple[float, float]:
    """(bytes per second while streaming, a round's fixed seconds), from the rounds.

    A least-squares line through (bytes, seconds) when the rounds differ enough in size for
    one; else (or when the line makes no sense: a slope not positive, a negative fixed cost)
    the plain rate over all rounds with no fixed cost, which errs on the slow side. A fixed
    cost is never above the quickest round's whole time. (0, 0) when nothing was shipped.
    """
    sent = [r for r in rounds if r.seconds > 0]
    total_b, total_s = sum(r.bytes for r in sent), sum(r.seconds for r in sent)
    if total_b <= 0 or total_s <= 0:
        return 0.0, 0.0
    plain = (total_b / total_s, 0.0)
    n = len(sent)
    if n < 2:
        return plain
    mean_b, mean_s = total_b / n, total_s / n
    var_b = sum((r.bytes - mean_b) ** 2 for r in sent)
    if var_b <= (0.05 * mean_b) ** 2 * n:  # all about the same size: no line through them
        return plain
    slope = sum((r.bytes - mean_b) * (r.seconds - mean_s) for r in sent) / var_b
    fixed = mean_s - slope * mean_b
    if slope <= 0 or fixed < 0:
        return plain
    return 1.0 / slope, min(fixed, min(r.seconds for r in sent))


def dirty_rate(rounds: Sequence[Round]) -> float:
    """Bytes re-dirtied per second, from the last two rounds (the most recent rate: a move
    that waits for a quieter moment must see it come); 0 with fewer than two rounds."""
    if len(rounds) < 2:
        return 0.0
    span = rounds[-1].started - rounds[-2].started
    return rounds[-1].bytes / span if span > 0 else 0.0


def predict(rounds: Sequence[Round], *, now: float, lag_s: float,
            overhead_ms: float) -> Prediction:
    """The freeze if the source froze ``lag_s`` after ``now`` (the same clock as the rounds'
    starts): ``overhead_ms`` + a round's fixed cost + the delta over the throughput."""
    if not rounds:
        raise ValueError("a prediction needs at least one pre-copy round")
    rate, round_s = throughput(rounds)
    dirty = dirty_rate(rounds)
    since = max(0.0, now + max(0.0, lag_s) - rounds[-1].started)
    delta = min(dirty * since, float(max(r.bytes for r in rounds)))
    send_ms = delta / rate * 1000 if rate > 0 else 0.0
    ms = max(0.0, overhead_ms) + round_s * 1000 + send_ms
    return Prediction(freeze_ms=round(ms, 2), delta_bytes=delta, dirty_bps=dirty,
                      throughput_bps=rate, round_ms=round_s * 1000,
                      overhead_ms=max(0.0, overhead_ms))
