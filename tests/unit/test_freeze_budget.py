"""The downtime budget's arithmetic (mobility.freeze_budget) and its request checks.

Aspects: throughput from a least-squares line through the rounds (the exact rate and fixed
cost back from rounds made with them), the plain rate when the rounds are alike or the line
makes no sense, (0, 0) when nothing was shipped, a fixed cost never above the quickest
round; the dirty rate from the last two rounds' starts (the most recent rate), 0 for one
round; the prediction: fixed costs plus delta over throughput, the delta growing with the
time since the last round and the lag, capped by the whole state, monotone in the dirty rate
(hypothesis), and a prediction of an empty list refused; ``fits``; ``detail`` naming its
parts. The request: deadline_s without max_freeze_ms, a budget out of bounds or on
stop-and-copy refused (Invalid, a 422), the default deadline filled in; the API's
MoveRequest refusing out-of-bounds, NaN and infinite values; Move records carrying the new
fields through to_dict/from_dict.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from api.schemas import MoveOut, MoveRequest
from mobility import freeze_budget
from mobility.errors import Invalid
from mobility.freeze_budget import Round, check_request, dirty_rate, predict, throughput
from mobility.models import Move

MB = 1_000_000


def made(rate: float, fixed: float, sizes: list[int], *, gap: float = 0.0) -> list[Round]:
    """Rounds back to back (plus ``gap``), each taking fixed + bytes / rate."""
    out, t = [], 100.0
    for b in sizes:
        seconds = fixed + b / rate
        out.append(Round(bytes=b, started=t, seconds=seconds))
        t += seconds + gap
    return out


def test_throughput_recovers_the_rate_and_the_fixed_cost() -> None:
    rate, fixed = throughput(made(50 * MB, 0.004, [32 * MB, 2 * MB, 300_000]))
    assert rate == pytest.approx(50 * MB, rel=1e-6)
    assert fixed == pytest.approx(0.004, rel=1e-6)


@pytest.mark.parametrize(("rounds", "expected"), [
    ([Round(bytes=10 * MB, started=0, seconds=1.0)], 10 * MB),  # one round
    ([Round(bytes=MB, started=0, seconds=0.1), Round(bytes=MB, started=1, seconds=0.3)],
     5 * MB),  # alike in size: no line through them
    ([Round(bytes=4 * MB, started=0, seconds=0.1), Round(bytes=MB, started=1, seconds=0.3)],
     12.5 * MB),  # the bigger round was quicker: a negative slope
    ([Round(bytes=4 * MB, started=0, seconds=0.4), Round(bytes=MB, started=1, seconds=0.001)],
     5 * MB / 0.401),  # a line with a negative fixed cost
])
def test_throughput_falls_back_to_the_plain_rate(rounds: list[Round], expected: float) -> None:
    rate, fixed = throughput(rounds)
    assert rate == pytest.approx(expected) and fixed == 0.0


def test_throughput_of_nothing_shipped() -> None:
    assert throughput([]) == (0.0, 0.0)
    assert throughput([Round(bytes=0, started=0, seconds=0.01)] * 3) == (0.0, 0.0)


def test_fixed_cost_never_above_the_quickest_round() -> None:
    # a line through these gives a fixed cost of 0.2 s, but one round took 0.15 s
    rounds = [Round(bytes=0, started=0, seconds=0.15), Round(bytes=MB, started=1, seconds=0.3),
              Round(bytes=2 * MB, started=2, seconds=0.35)]
    rate, fixed = throughput(rounds)
    assert rate > 0 and fixed <= 0.15


def test_dirty_rate_is_the_last_rounds_bytes_over_the_time_between_their_starts() -> None:
    rounds = [Round(bytes=32 * MB, started=10.0, seconds=0.8),
              Round(bytes=2 * MB, started=11.0, seconds=0.05),
              Round(bytes=100_000, started=11.5, seconds=0.01)]
    assert dirty_rate(rounds) == pytest.approx(200_000)  # not the 2 MB/s of the round before
    assert dirty_rate(rounds[:1]) == 0.0
    assert dirty_rate([rounds[1], Round(bytes=5, started=11.0, seconds=0)]) == 0.0


def test_prediction_adds_the_fixed_costs_to_the_delta_over_the_throughput() -> None:
    rounds = made(40 * MB, 0.002, [16 * MB, 400_000])  # starts 100.0, 100.402
    dirty = dirty_rate(rounds)
    assert dirty == pytest.approx(400_000 / 0.402)
    now = rounds[-1].started + 0.1
    p = predict(rounds, now=now, lag_s=0.05, overhead_ms=15.0)
    delta = dirty * 0.15
    assert p.delta_bytes == pytest.approx(delta)
    assert p.freeze_ms == pytest.approx(15.0 + 2.0 + delta / (40 * MB) * 1000, abs=0.01)
    assert p.throughput_bps == pytest.approx(40 * MB) and p.round_ms == pytest.approx(2.0)
    assert p.fits(p.freeze_ms) and not p.fits(p.freeze_ms - 0.1)
    for part in ("predicted", "bytes", "MB/s", "dirty rate", "overhead 15.0"):
        assert part in p.detail()


def test_delta_never_exceeds_the_whole_state() -> None:
    rounds = made(10 * MB, 0.0, [MB, 900_000])
    p = predict(rounds, now=rounds[-1].started + 3600, lag_s=0, overhead_ms=0)
    assert p.delta_bytes == MB


def test_prediction_needs_a_round() -> None:
    with pytest.raises(ValueError, match="at least one"):
        predict([], now=0, lag_s=0, overhead_ms=0)


@given(first=st.integers(1, 1 << 30), low=st.integers(0, 1 << 24), more=st.integers(0, 1 << 24),
       since=st.floats(0, 60), lag=st.floats(-1, 10), overhead=st.floats(0, 1000))
def test_more_dirt_never_predicts_a_shorter_freeze(first: int, low: int, more: int,
                                                   since: float, lag: float,
                                                   overhead: float) -> None:
    def at(second: int) -> freeze_budget.Prediction:
        rounds = [Round(bytes=first, started=0.0, seconds=1.0),
                  Round(bytes=second, started=1.0, seconds=0.1)]
        return predict(rounds, now=1.0 + since, lag_s=lag, overhead_ms=overhead)

    quiet, busy = at(low), at(low + more)
    assert quiet.dirty_bps <= busy.dirty_bps
    assert 0 <= quiet.delta_bytes <= busy.delta_bytes <= max(first, low + more)
    assert quiet.freeze_ms >= overhead - 0.01 and math.isfinite(busy.freeze_ms)
    # the throughput is measured from the same rounds: a bigger second round may change it,
    # so compare the delta's share only when it did not
    if quiet.throughput_bps == busy.throughput_bps and quiet.round_ms == busy.round_ms:
        assert quiet.freeze_ms <= busy.freeze_ms + 0.01


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_freeze_ms": None, "deadline_s": 5.0}, "give max_freeze_ms too"),
    ({"max_freeze_ms": 0.0, "deadline_s": None}, "above 0"),
    ({"max_freeze_ms": 60_001.0, "deadline_s": None}, "at most 60000"),
    ({"max_freeze_ms": 50.0, "deadline_s": -1.0}, "from 0 to 600"),
    ({"max_freeze_ms": 50.0, "deadline_s": 601.0}, "from 0 to 600"),
    ({"max_freeze_ms": 50.0, "deadline_s": None, "strategy": "stop-and-copy"},
     "needs the precopy strategy"),
])
def test_requests_refused(kwargs: dict[str, object], message: str) -> None:
    args = {"strategy": "precopy", **kwargs}
    with pytest.raises(Invalid, match=message):
        check_request(**args)  # type: ignore[arg-type]


def test_requests_taken_with_their_deadline() -> None:
    assert check_request(max_freeze_ms=None, deadline_s=None, strategy="stop-and-copy") is None
    assert check_request(max_freeze_ms=50, deadline_s=None,
                         strategy="precopy") == freeze_budget.DEADLINE_S_DEFAULT
    assert check_request(max_freeze_ms=50, deadline_s=0, strategy="precopy") == 0.0


@pytest.mark.parametrize("body", [
    {"max_freeze_ms": 0}, {"max_freeze_ms": -5}, {"max_freeze_ms": 60_001},
    {"max_freeze_ms": "nan"}, {"max_freeze_ms": "inf"}, {"max_freeze_ms": "fast"},
    {"max_freeze_ms": 10, "deadline_s": -0.5}, {"max_freeze_ms": 10, "deadline_s": 601},
    {"max_freeze_ms": 10, "deadline_s": "inf"},
])
def test_move_request_schema_refuses(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as caught:
        MoveRequest.model_validate({"service": "web", "to_cluster": "edge", **body})
    assert {str(e["loc"][0]) for e in caught.value.errors()} <= {"max_freeze_ms", "deadline_s"}


def test_move_carries_its_budget_to_the_api() -> None:
    move = Move(id="m-1", service="web", from_cluster="core", to_cluster="edge",
                max_freeze_ms=25.0, deadline_s=5.0, predicted_freeze_ms=12.5)
    back = Move.from_dict(move.to_dict())
    assert (back.max_freeze_ms, back.deadline_s, back.predicted_freeze_ms) == (25.0, 5.0, 12.5)
    out = MoveOut.of(back)
    assert (out.max_freeze_ms, out.deadline_s, out.predicted_freeze_ms) == (25.0, 5.0, 12.5)
    old = {k: v for k, v in move.to_dict().items()
           if k not in ("max_freeze_ms", "deadline_s", "predicted_freeze_ms")}
    assert Move.from_dict(old).max_freeze_ms is None  # records from before still read
