"""The move canvas of workers.canvas, built from task names only.

Aspects: a new move runs ADMIT..CUTOVER in one ``move.run`` task (no queue hop before the
switch of the client's traffic), then RELEASE in its own task and ``move.complete`` last;
the reaper's forward canvas after a crash (from the phases the move has done) runs only what
is left: from CUTOVER on, RELEASE alone, or just the completion; every step carries the
move's epoch, is immutable (a phase's result is never passed on as an argument) and expires.
"""

from __future__ import annotations

from typing import Any

import pytest

from mobility.models import Move, Phase
from mobility.phases import ORDER, last_done, remaining
from workers.canvas import PHASE_EXPIRES_S, canvas


def steps(chain: Any) -> list[tuple[str, tuple[Any, ...]]]:
    for sig in chain.tasks:
        assert sig.immutable and sig.options["expires"] == PHASE_EXPIRES_S
    return [(sig.task, tuple(sig.args)) for sig in chain.tasks]


def test_a_new_move_switches_in_one_task_then_releases_then_completes() -> None:
    assert steps(canvas("mv-1", 0, ORDER)) == [
        ("move.run", ("mv-1", 0, ["admit", "place", "wire", "sync", "cutover"])),
        ("move.release", ("mv-1", 0)),
        ("move.complete", ("mv-1", 0)),
    ]


@pytest.mark.parametrize(("done", "expected"), [
    (["admit", "place", "wire", "sync"], [("move.run", ("mv-2", 3, ["cutover"])),
                                          ("move.release", ("mv-2", 3)),
                                          ("move.complete", ("mv-2", 3))]),
    (["admit", "place", "wire", "sync", "cutover"], [("move.release", ("mv-2", 3)),
                                                     ("move.complete", ("mv-2", 3))]),
    ([str(p) for p in ORDER], [("move.complete", ("mv-2", 3))]),
])
def test_the_reapers_forward_canvas_runs_only_what_is_left(
        done: list[str], expected: list[tuple[str, tuple[Any, ...]]]) -> None:
    move = Move(id="mv-2", service="s", from_cluster="a", to_cluster="b", phases_done=done,
                cutover_confirmed="cutover" in done, epoch=3)
    left = remaining(last_done(move))
    assert Phase.RELEASE not in left or left[-1] == Phase.RELEASE
    assert steps(canvas(move.id, move.epoch, left)) == expected
