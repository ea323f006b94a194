"""The move saga's rules in mobility.phases.

Aspects: phase ORDER; the compensation of each phase (RELEASE has none); the full matrix of
allowed and refused status transitions; last_done and remaining at the ends; the compensation
plan (newest first, started phases only, RELEASE skipped, read from Move.phases_started
strings); what the reaper does after a crash (forward, rollback, none).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from mobility.errors import TransitionError
from mobility.models import Move, MoveStatus, Phase
from mobility.phases import (
    COMPENSATIONS,
    ORDER,
    check_transition,
    compensation_plan,
    last_done,
    recovery,
    remaining,
)

S = MoveStatus
EXPECTED_ALLOWED = {
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.ROLLING_BACK),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.ROLLING_BACK),
    (S.RUNNING, S.FAILED),
    (S.ROLLING_BACK, S.ROLLED_BACK),
    (S.ROLLING_BACK, S.FAILED),
}


def move(**kw: Any) -> Move:
    return Move(id="m1", service="web", from_cluster="core", to_cluster="edge", **kw)


def test_order_is_the_documented_saga() -> None:
    assert ORDER == (Phase.ADMIT, Phase.PLACE, Phase.WIRE, Phase.SYNC, Phase.CUTOVER, Phase.RELEASE)
    assert set(ORDER) == set(Phase)


def test_every_phase_but_release_has_a_compensation() -> None:
    assert COMPENSATIONS == {
        Phase.ADMIT: "release_lock",
        Phase.PLACE: "remove_target",
        Phase.WIRE: "unwire_target",
        Phase.SYNC: "drop_state",
        Phase.CUTOVER: "switch_back",
        Phase.RELEASE: None,
    }


@pytest.mark.parametrize(("current", "new"), sorted(EXPECTED_ALLOWED))
def test_allowed_transitions_pass(current: MoveStatus, new: MoveStatus) -> None:
    check_transition(current, new)


@pytest.mark.parametrize("status", list(MoveStatus))
def test_staying_in_the_same_status_is_allowed(status: MoveStatus) -> None:
    check_transition(status, status)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (a, b)
        for a, b in itertools.product(MoveStatus, repeat=2)
        if a != b and (a, b) not in EXPECTED_ALLOWED
    ],
)
def test_other_transitions_are_refused(current: MoveStatus, new: MoveStatus) -> None:
    with pytest.raises(TransitionError) as info:
        check_transition(current, new)
    assert str(current) in str(info.value) and str(new) in str(info.value)


def test_succeeded_cannot_run_again() -> None:
    with pytest.raises(TransitionError):
        check_transition(MoveStatus.SUCCEEDED, MoveStatus.RUNNING)


def test_transition_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_transition(MoveStatus.ROLLED_BACK, MoveStatus.PENDING)


def test_phase_enum_and_order_agree() -> None:
    assert list(Phase) == list(ORDER)


def test_last_done_is_the_latest_in_saga_order_whatever_the_list_order() -> None:
    assert last_done(move()) is None
    assert last_done(move(phases_done=["admit"])) is Phase.ADMIT
    assert last_done(move(phases_done=["wire", "admit", "place"])) is Phase.WIRE
    assert last_done(move(phases_done=list(reversed([str(p) for p in ORDER])))) is Phase.RELEASE


def test_remaining() -> None:
    assert remaining(None) == list(ORDER)
    assert remaining(Phase.ADMIT) == [
        Phase.PLACE,
        Phase.WIRE,
        Phase.SYNC,
        Phase.CUTOVER,
        Phase.RELEASE,
    ]
    assert remaining(Phase.CUTOVER) == [Phase.RELEASE]
    assert remaining(Phase.RELEASE) == []


def test_remaining_returns_a_fresh_list() -> None:
    first = remaining(None)
    first.clear()
    assert remaining(None) == list(ORDER)


def test_compensation_plan_is_newest_first() -> None:
    m = move(phases_started=["admit", "place", "wire"])
    assert compensation_plan(m) == [Phase.WIRE, Phase.PLACE, Phase.ADMIT]


def test_compensation_plan_follows_order_not_list_order() -> None:
    m = move(phases_started=["wire", "admit", "place"])
    assert compensation_plan(m) == [Phase.WIRE, Phase.PLACE, Phase.ADMIT]


def test_compensation_plan_skips_release() -> None:
    m = move(phases_started=[str(p) for p in ORDER])
    assert compensation_plan(m) == [Phase.CUTOVER, Phase.SYNC, Phase.WIRE, Phase.PLACE, Phase.ADMIT]


def test_compensation_plan_counts_started_not_done() -> None:
    m = move(phases_started=["admit", "place", "wire", "sync"], phases_done=["admit", "place"])
    assert compensation_plan(m)[0] is Phase.SYNC


def test_compensation_plan_of_a_move_that_never_started_is_empty() -> None:
    assert compensation_plan(move()) == []
    assert compensation_plan(move(phases_started=["release"])) == []


def test_compensation_plan_ignores_unknown_names() -> None:
    assert compensation_plan(move(phases_started=["admit", "teleport"])) == [Phase.ADMIT]


@pytest.mark.parametrize(
    "status", [MoveStatus.PENDING, MoveStatus.RUNNING, MoveStatus.ROLLING_BACK]
)
def test_recovery_of_a_live_move(status: MoveStatus) -> None:
    assert recovery(move(status=status, cutover_confirmed=True)) == "forward"
    assert recovery(move(status=status, cutover_confirmed=False)) == "rollback"


@pytest.mark.parametrize(
    "status", [MoveStatus.SUCCEEDED, MoveStatus.FAILED, MoveStatus.ROLLED_BACK]
)
@pytest.mark.parametrize("confirmed", [True, False])
def test_recovery_of_an_ended_move_is_none(status: MoveStatus, confirmed: bool) -> None:
    assert recovery(move(status=status, cutover_confirmed=confirmed)) == "none"
