"""The move as a saga: phase order, compensations, and what to do after a crash.

Pure functions over :class:`Move` records, so the rules can be tested without any service.

| phase   | compensation      |
|---------|-------------------|
| ADMIT   | release_lock      |
| PLACE   | remove_target     |
| WIRE    | unwire_target     |
| SYNC    | drop_state        |
| CUTOVER | switch_back       |
| RELEASE | none: after a confirmed cutover the move only goes forward |
"""

from __future__ import annotations

from mobility.errors import TransitionError
from mobility.models import Move, MoveStatus, Phase

ORDER: tuple[Phase, ...] = (
    Phase.ADMIT, Phase.PLACE, Phase.WIRE, Phase.SYNC, Phase.CUTOVER, Phase.RELEASE,
)

COMPENSATIONS: dict[Phase, str | None] = {
    Phase.ADMIT: "release_lock",
    Phase.PLACE: "remove_target",
    Phase.WIRE: "unwire_target",
    Phase.SYNC: "drop_state",
    Phase.CUTOVER: "switch_back",
    Phase.RELEASE: None,
}

ALLOWED: dict[MoveStatus, frozenset[MoveStatus]] = {
    MoveStatus.PENDING: frozenset({MoveStatus.RUNNING, MoveStatus.ROLLING_BACK}),
    MoveStatus.RUNNING: frozenset(
        {MoveStatus.SUCCEEDED, MoveStatus.ROLLING_BACK, MoveStatus.FAILED}
    ),
    MoveStatus.ROLLING_BACK: frozenset({MoveStatus.ROLLED_BACK, MoveStatus.FAILED}),
    MoveStatus.SUCCEEDED: frozenset(),
    MoveStatus.FAILED: frozenset(),
    MoveStatus.ROLLED_BACK: frozenset(),
}


def check_transition(current: MoveStatus, new: MoveStatus) -> None:
    if new == current:
        return
    if new not in ALLOWED[current]:
        raise TransitionError(f"move cannot go from {current} to {new}")


def last_done(move: Move) -> Phase | None:
    """The latest phase in saga order that the move finished (None before ADMIT ends)."""
    done = [p for p in ORDER if str(p) in move.phases_done]
    return done[-1] if done else None


def remaining(after: Phase | None) -> list[Phase]:
    """Phases still to run once ``after`` has ended (all of them for None)."""
    if after is None:
        return list(ORDER)
    return list(ORDER[ORDER.index(after) + 1 :])


def compensation_plan(move: Move) -> list[Phase]:
    """Phases to undo, newest first: every started phase that has a compensation.

    A phase counts once it has *started*: it may have done half its work before failing, and
    every compensation is idempotent, so undoing a phase that did nothing is harmless.
    """
    started = [p for p in ORDER if str(p) in move.phases_started]
    return [p for p in reversed(started) if COMPENSATIONS[p] is not None]


def recovery(move: Move) -> str:
    """What the reaper does with a move whose worker vanished.

    ``"forward"``: the cutover was confirmed, or the target may have served already (its
    peers were switched to it): finish the move from where it stopped.
    ``"rollback"``: anything earlier; the source still serves, so undo what was started.
    ``"none"``: the move already ended.
    """
    if move.status.terminal:
        return "none"
    if move.cutover_confirmed or move.forward_only:
        return "forward"
    return "rollback"
