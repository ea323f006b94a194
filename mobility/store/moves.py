"""Moves, the per-service locks, the move leases, and each move's event stream.

Creating a move takes the service's lock in the same Lua step, so two concurrent requests to
move one service cannot both win. Ending a move (:meth:`MoveStore.finish_move`) writes its
terminal status, releases the lock, leaves the active set and drops the lease in one
transaction: nobody can see a terminal move whose service is still locked by it.

The per-service lock (``mob:lock:service:<name>``) holds the id of the move that owns the
service and has no expiry of its own: a move always ends, because its *lease*
(``mob:lease:move:<id>``, refreshed by whichever worker runs it) expires when that worker dies,
and the reaper then finishes or rolls the move back, which releases the lock.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.client import Pipeline

from mobility import keys
from mobility.errors import Conflict, NotFound, StaleEpoch
from mobility.models import Event, Move, MoveStatus
from mobility.phases import check_transition
from mobility.store.base import StoreBase, pack, unpack
from mobility.store.metrics import record_move_end

_CREATE_MOVE = """
if redis.call('exists', KEYS[2]) == 0 then return {0, ''} end
local owner = redis.call('get', KEYS[1])
if owner then return {-1, owner} end
for i = 6, #KEYS do
  local peer = redis.call('get', KEYS[i])
  if peer then return {-2, ARGV[3 + i - 5]} end
end
redis.call('set', KEYS[1], ARGV[1])
redis.call('set', KEYS[3], ARGV[2])
redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
redis.call('sadd', KEYS[5], ARGV[1])
return {1, ARGV[1]}
"""

# The move's lease: a worker's token, or "handoff:<epoch>" while a phase's task is on its way
# (any task of that epoch may take it then). Taken only when free, handed over, or already
# ours; refreshed only while ours.
_ACQUIRE_LEASE = """
local cur = redis.call('get', KEYS[1])
if (not cur) or cur == ARGV[1] or cur == ARGV[3] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_REFRESH_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[3], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def handoff(epoch: int) -> str:
    """The lease's value while a phase's task is on its way: any task of ``epoch`` takes it."""
    return f"handoff:{epoch}"


def new_move_id() -> str:
    return f"mv-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class EventBatch:
    """One step of reading a move's events: what came, and the status once it has ended
    (then ``events`` includes everything up to the end: there is nothing more to read)."""

    events: list[Event]
    ended: MoveStatus | None = None


class MoveStore(StoreBase):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self._create_move = self.r.register_script(_CREATE_MOVE)
        self._release_lock = self.r.register_script(_RELEASE_LOCK)
        self._acquire_lease = self.r.register_script(_ACQUIRE_LEASE)
        self._refresh_lease = self.r.register_script(_REFRESH_LEASE)

    # --- moves ---

    def create_move(self, move: Move, *, peers: Sequence[str] = ()) -> Move:
        """Record a new move and take the service's lock, atomically; refused while the
        service or any of its link ``peers`` is locked (moving or being removed), so moves of
        linked services never wire against each other's old instance."""
        status, owner = self._create_move(
            keys=[keys.service_lock(move.service), keys.service(move.service), keys.move(move.id),
                  keys.MOVES, keys.ACTIVE_MOVES, *[keys.service_lock(p) for p in peers]],
            args=[move.id, pack(move.to_dict()), move.created_at, *peers],
        )
        if status == 0:
            raise NotFound(f"service {move.service!r} does not exist")
        if status == -1:
            raise Conflict(
                f"service {move.service!r} is already moving (move {owner.decode()})"
            )
        if status == -2:
            raise Conflict(f"service {move.service!r} is linked to {owner.decode()!r}, which is "
                           "moving or being removed; try again when that has ended")
        return move

    def get_move(self, move_id: str) -> Move:
        raw = cast(bytes | None, self.r.get(keys.move(move_id)))
        if raw is None:
            raise NotFound(f"move {move_id!r} does not exist")
        return Move.from_dict(unpack(raw))

    def update_move(
        self, move_id: str, fn: Callable[[Move], None], *, epoch: int | None = None,
        _also: Callable[[Pipeline, Move, dict[str, bytes | None]], None] | None = None,
        _watch: tuple[str, ...] = (),
    ) -> Move:
        """Change a move under WATCH; refuses (StaleEpoch) when ``epoch`` is out of date."""

        def apply(d: dict[str, Any]) -> dict[str, Any]:
            move = Move.from_dict(d)
            if epoch is not None and move.epoch != epoch:
                raise StaleEpoch(f"move {move_id} is at epoch {move.epoch}, task has {epoch}")
            before = move.status
            fn(move)
            check_transition(before, move.status)
            return move.to_dict()

        also = None
        if _also is not None:
            hook = _also

            def also(pipe: Pipeline, new: Any, seen: dict[str, bytes | None]) -> None:
                hook(pipe, Move.from_dict(new), seen)

        return Move.from_dict(self._update(keys.move(move_id), apply, watch=_watch, also=also))

    def moves(self, *, limit: int = 100) -> list[Move]:
        ids = cast(list[bytes], self.r.zrevrange(keys.MOVES, 0, limit - 1))
        return [self.get_move(i.decode()) for i in ids]

    def active_moves(self) -> list[Move]:
        result = []
        for i in self._names(keys.ACTIVE_MOVES):
            try:
                result.append(self.get_move(i))
            except NotFound:
                self.r.srem(keys.ACTIVE_MOVES, i)
        return result

    def finish_move(self, move_id: str, status: MoveStatus, *, error: str | None = None) -> Move:
        """Make the move terminal, release the service lock, drop it from the active set and
        drop its lease: one transaction, so the end and the unlock are seen together."""
        move = self.get_move(move_id)
        lock = keys.service_lock(move.service)
        ending = [False]  # whether this write is the one that ends it (set again on a retry)

        def done(m: Move) -> None:
            ending[0] = not m.status.terminal
            m.status = status
            m.finished_at = time.time()
            if error:
                m.error = error

        def unlock(pipe: Pipeline, m: Move, seen: dict[str, bytes | None]) -> None:
            owner = seen.get(lock)
            if owner is not None and owner.decode() == move_id:
                pipe.delete(lock)
            pipe.srem(keys.ACTIVE_MOVES, move_id)
            pipe.delete(keys.move_lease(move_id))
            if ending[0]:  # counted once: in the transaction that makes it terminal
                record_move_end(pipe, m)

        return self.update_move(move_id, done, _also=unlock, _watch=(lock,))

    def take_over(self, move_id: str, *, epoch: int, token: str, ttl_s: float) -> Move:
        """The reaper's takeover of a move whose worker vanished: bump its epoch and hold its
        lease (for the hand-off to the tasks it dispatches) in one transaction.

        Refused (StaleEpoch) when the move is no longer at ``epoch``, has ended, or someone
        holds its lease: of two reapers at once, exactly one takes the move.
        """
        lease = keys.move_lease(move_id)

        def bump(m: Move) -> None:
            if m.status.terminal:  # it ended after the reaper listed it: nothing to take
                raise StaleEpoch(f"move {move_id} ended ({m.status})")
            m.epoch += 1

        def hold(pipe: Pipeline, m: Move, seen: dict[str, bytes | None]) -> None:
            if seen.get(lease) is not None:
                raise StaleEpoch(f"move {move_id} is leased again: someone took it over")
            pipe.set(lease, handoff(m.epoch), px=int(ttl_s * 1000))

        return self.update_move(move_id, bump, epoch=epoch, _also=hold, _watch=(lease,))

    # --- locks ---

    def take_lock(self, service: str, owner: str, *, ttl_s: float) -> bool:
        """Take a service's lock for work other than a move (its removal). It expires: a
        worker killed mid-removal never leaves the service locked for ever."""
        return bool(self.r.set(keys.service_lock(service), owner, nx=True,
                               px=int(ttl_s * 1000)))

    def release_lock(self, service: str, owner: str) -> None:
        self._release_lock(keys=[keys.service_lock(service)], args=[owner])

    def lock_owner(self, service: str) -> str | None:
        raw = cast(bytes | None, self.r.get(keys.service_lock(service)))
        return raw.decode() if raw else None

    def expire_state(self, move_id: str, ttl_s: int) -> None:
        """Every key of the move's state transfer expires ``ttl_s`` after the move ended."""
        with self.r.pipeline(transaction=False) as p:
            for key in keys.state_keys(move_id):
                p.expire(key, ttl_s)
            p.execute()

    # --- leases ---

    def hold_lease(self, move_id: str, token: str, ttl_s: float) -> None:
        """Set the lease unconditionally (tests, and tools that know no one else runs)."""
        self.r.set(keys.move_lease(move_id), token, px=int(ttl_s * 1000))

    def acquire_lease(self, move_id: str, token: str, *, epoch: int, ttl_s: float) -> bool:
        """Take the lease if it is free, handed over to ``epoch``, or ours already."""
        return bool(self._acquire_lease(keys=[keys.move_lease(move_id)],
                                        args=[token, int(ttl_s * 1000), handoff(epoch)]))

    def refresh_lease(self, move_id: str, token: str, *, ttl_s: float,
                      value: str | None = None) -> bool:
        """Extend the lease while it is ours (``value``: hand it over instead); False when
        someone else holds it now."""
        return bool(self._refresh_lease(keys=[keys.move_lease(move_id)],
                                        args=[token, int(ttl_s * 1000), value or token]))

    def release_lease(self, move_id: str, token: str) -> None:
        self._release_lock(keys=[keys.move_lease(move_id)], args=[token])

    def lease_alive(self, move_id: str) -> bool:
        return bool(self.r.exists(keys.move_lease(move_id)))

    # --- injected pauses (fault injection only) ---

    def release_pause(self, move_id: str) -> None:
        """End a ``pause:<phase>`` hold of the move (now or when it starts)."""
        with self.r.pipeline(transaction=True) as p:
            p.rpush(keys.fault_release(move_id), "1")
            p.expire(keys.fault_release(move_id), 3600)
            p.execute()

    def fire_once(self, move_id: str, fault: str) -> bool:
        """True the first time a one-shot fault of the move is asked about, then False."""
        return bool(self.r.set(keys.fault_fired(move_id, fault), "1", nx=True, ex=3600))

    def wait_pause_released(self, move_id: str, *, timeout: float) -> bool:
        """Block until the move's pause is released (True) or ``timeout`` passes (False).

        Waits in slices shorter than the client's socket timeout, so a long hold never looks
        like a dead connection."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.r.blpop([keys.fault_release(move_id)], timeout=max(1, min(5, int(left)))):
                return True
        return False

    # --- events ---

    def add_event(self, event: Event, *, ttl_s: int) -> str:
        key = keys.move_events(event.move_id)
        data = event.to_dict()
        data.pop("id", None)
        entry = cast(bytes, self.r.xadd(key, {"e": pack(data)}, maxlen=10000,
                                         approximate=True))
        self.r.expire(key, ttl_s)
        return entry.decode()

    def events(self, move_id: str, *, after: str = "-") -> list[Event]:
        start = "-" if after in ("-", "0", "") else f"({after}"
        rows = cast(list[tuple[bytes, dict[bytes, bytes]]],
                    self.r.xrange(keys.move_events(move_id), min=start))
        return [self._event(entry, fields) for entry, fields in rows]

    def wait_events(self, move_id: str, *, after: str, block_ms: int) -> list[Event]:
        """Events after ``after`` (a stream id, "0" for all), waiting up to ``block_ms``."""
        rows = self.r.xread({keys.move_events(move_id): after or "0"}, block=block_ms)
        out: list[Event] = []
        for _key, entries in cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                                  rows or []):
            out.extend(self._event(entry, fields) for entry, fields in entries)
        return out

    def read_events(self, move_id: str, *, after: str, block_ms: int = 1000) -> EventBatch:
        """The one read loop's step (the API's SSE stream and any follower use it): events
        after ``after``, waiting up to ``block_ms``; once none come and the move has ended,
        a last read (the terminal event may have landed just now) and its status."""
        batch = self.wait_events(move_id, after=after, block_ms=block_ms)
        if batch:
            return EventBatch(batch)
        move = self.get_move(move_id)
        if move.status.terminal:
            return EventBatch(self.events(move_id, after=after), ended=move.status)
        return EventBatch([])

    @staticmethod
    def _event(entry: bytes, fields: dict[bytes, bytes]) -> Event:
        d = unpack(fields[b"e"])
        return Event(id=entry.decode(), **d)
