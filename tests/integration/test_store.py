"""The registry's move transitions against a real Redis.

Aspects: ending a move writes its terminal status, releases the service's lock, leaves the
active set and drops the lease in one MULTI/EXEC (seen with MONITOR); a reader polling the move
and the service while moves end never sees a terminal move whose service is still locked by it
(the invariant the fresh-machine failure broke); a lock taken by someone else is left alone;
a move that ended is never taken over by the reaper.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from mobility import keys
from mobility.models import Instance, Move, MoveStatus, Service
from mobility.store import Registry, new_move_id
from tests.conftest import RedisServer


@pytest.fixture
def registry(redis_server: RedisServer) -> Iterator[Registry]:
    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    reg = Registry.from_url(url)
    reg.r.flushdb()
    yield reg
    reg.r.flushdb()
    reg.r.close()


def _moving(reg: Registry, service: str) -> Move:
    if reg.get_service(service) is None:
        reg.put_service(Service(name=service, workload="echo",
                                instance=Instance(cluster="core", node="n1", pod=f"{service}-1")))
    move = Move(id=new_move_id(), service=service, from_cluster="core", to_cluster="edge",
                created_at=time.time())
    reg.create_move(move)
    reg.update_move(move.id, lambda m: setattr(m, "status", MoveStatus.RUNNING))
    reg.hold_lease(move.id, "tok", 30)
    return move


def test_a_moves_end_and_its_unlock_are_one_transaction(registry: Registry,
                                                        redis_server: RedisServer) -> None:
    move = _moving(registry, "svc-a")
    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    mon_client = redis.Redis.from_url(url)
    seen: list[str] = []
    with mon_client.monitor() as mon:
        registry.finish_move(move.id, MoveStatus.SUCCEEDED)
        registry.r.ping()  # marks the end of what finish_move sent
        for entry in mon.listen():
            cmd = str(entry["command"])
            seen.append(cmd)
            if cmd.upper().startswith("PING"):
                break
    mon_client.close()
    upper = [c.upper() for c in seen]
    start = upper.index("MULTI")
    end = upper.index("EXEC")
    inside = upper[start:end]
    assert any(c.startswith("SET " + keys.move(move.id).upper()) for c in inside), seen
    assert any(c.startswith("DEL " + keys.service_lock("svc-a").upper()) for c in inside), seen
    assert any(c.startswith("SREM " + keys.ACTIVE_MOVES.upper()) for c in inside), seen
    assert any(c.startswith("DEL " + keys.move_lease(move.id).upper()) for c in inside), seen
    assert registry.lock_owner("svc-a") is None
    assert not registry.lease_alive(move.id)
    assert registry.get_move(move.id).status == MoveStatus.SUCCEEDED


def test_a_reader_never_sees_a_terminal_move_still_locked(registry: Registry,
                                                          redis_server: RedisServer) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    reader = Registry.from_url(url)
    current: dict[str, str] = {}
    stop = threading.Event()
    violations: list[str] = []
    reads = 0

    def watch() -> None:
        nonlocal reads
        while not stop.is_set():
            move_id = current.get("id")
            if not move_id:
                continue
            # the order a client checks in: the move first, then the service
            status = reader.get_move(move_id).status
            svc = reader.get_service("svc-b")
            reads += 1
            if status.terminal and svc is not None and svc.moving == move_id:
                violations.append(f"{move_id} {status} but svc-b locked by it")

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        for _ in range(200):
            move = _moving(registry, "svc-b")
            current["id"] = move.id
            registry.finish_move(move.id, MoveStatus.SUCCEEDED)
    finally:
        stop.set()
        t.join(10)
        reader.r.close()
    assert reads > 0
    assert violations == []


def test_a_lock_owned_by_someone_else_is_left_alone(registry: Registry) -> None:
    move = _moving(registry, "svc-c")
    registry.r.set(keys.service_lock("svc-c"), "removal-1")  # taken over, e.g. by a removal
    registry.finish_move(move.id, MoveStatus.FAILED)
    assert registry.lock_owner("svc-c") == "removal-1"
    assert move.id not in {m.id for m in registry.active_moves()}


class _Untouched:
    """A port the reaper must not use: it only reads and bumps move records."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the reaper called {name}")


def test_two_reapers_at_once_take_a_lost_move_exactly_once(registry: Registry) -> None:
    from mobility.moving import Engine
    from mobility.settings import Settings

    engines = [Engine(registry=registry, federation=_Untouched(),  # type: ignore[arg-type]
                      wiring=_Untouched(), state_agents=_Untouched(),  # type: ignore[arg-type]
                      settings=Settings()) for _ in range(2)]
    for round_ in range(20):
        move = _moving(registry, f"svc-r{round_}")
        registry.r.delete(keys.move_lease(move.id))  # its worker died: the lease is gone
        barrier = threading.Barrier(2)
        taken: list[list[object]] = [[], []]

        def reap(i: int, barrier: threading.Barrier, taken: list[list[object]]) -> None:
            barrier.wait()
            taken[i] = list(engines[i].reap())

        threads = [threading.Thread(target=reap, args=(i, barrier, taken)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        mine = [r for rs in taken for r in rs if getattr(r, "move_id", None) == move.id]
        assert len(mine) == 1, (round_, taken)
        assert registry.get_move(move.id).epoch == 1
        registry.finish_move(move.id, MoveStatus.FAILED)


def test_the_lease_is_exclusive_and_a_worker_that_loses_it_knows(registry: Registry) -> None:
    from mobility.errors import LeaseLost
    from mobility.moving import Engine
    from mobility.settings import Settings

    engine = Engine(registry=registry, federation=_Untouched(),  # type: ignore[arg-type]
                    wiring=_Untouched(), state_agents=_Untouched(),  # type: ignore[arg-type]
                    settings=Settings(lease_ttl_s=0.6, lease_handoff_s=5))
    move = _moving(registry, "svc-lease")
    registry.r.delete(keys.move_lease(move.id))
    with engine.lease(move.id, 0) as held:
        # a second worker (a redelivered task) cannot take it while it is held
        with pytest.raises(LeaseLost), engine.lease(move.id, 0):
            pass
        # a takeover (the reaper, after a stall) replaces it: the holder sees it is lost
        registry.r.set(keys.move_lease(move.id), "someone-else", px=5000)
        assert held.lost.wait(5), "the holder never noticed it lost the lease"
        with pytest.raises(LeaseLost):
            held.check()
    assert registry.r.get(keys.move_lease(move.id)) == b"someone-else"  # left to its owner
    registry.r.delete(keys.move_lease(move.id))
    with engine.lease(move.id, 0):
        pass
    # handed over to the next phase's task of the same epoch, and only to it
    assert registry.r.get(keys.move_lease(move.id)) == b"handoff:0"
    with pytest.raises(LeaseLost), engine.lease(move.id, 1):
        pass
    with engine.lease(move.id, 0):
        pass
    registry.finish_move(move.id, MoveStatus.FAILED)


def test_a_move_that_ended_after_the_reaper_listed_it_is_not_taken_over(
        registry: Registry) -> None:
    """The reaper lists the active moves, then takes each lost one over; a move that succeeded
    in between (its COMPLETE ran, its lease went with it) keeps its epoch and status."""
    from mobility.errors import StaleEpoch

    move = _moving(registry, "svc-ended")
    registry.finish_move(move.id, MoveStatus.SUCCEEDED)
    with pytest.raises(StaleEpoch, match="ended"):
        registry.take_over(move.id, epoch=0, token="reaper", ttl_s=5)
    after = registry.get_move(move.id)
    assert (after.epoch, after.status) == (0, MoveStatus.SUCCEEDED)
    assert not registry.lease_alive(move.id)
