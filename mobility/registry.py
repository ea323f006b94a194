"""The Redis-backed registry of clusters, services, links and moves.

Records are msgpack blobs under keys from :mod:`mobility.keys`. State transitions are guarded
with WATCH/MULTI (read, change, write only if nobody wrote in between) or a Lua script where
several keys must change together: creating a move takes the service's lock in the same step,
so two concurrent requests to move one service cannot both win.

The per-service lock (``mob:lock:service:<name>``) holds the id of the move that owns the
service and has no expiry of its own: a move always ends, because its *lease*
(``mob:lease:move:<id>``, refreshed by whichever worker runs it) expires when that worker dies,
and the reaper then finishes or rolls the move back, which releases the lock.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import msgpack
import redis
from redis.exceptions import WatchError

from mobility import keys
from mobility.errors import Conflict, NotFound
from mobility.models import Cluster, Event, Link, Move, MoveStatus, Service
from mobility.phases import check_transition

log = logging.getLogger(__name__)

T = TypeVar("T")

_CREATE_MOVE = """
if redis.call('exists', KEYS[2]) == 0 then return {0, ''} end
local owner = redis.call('get', KEYS[1])
if owner then return {-1, owner} end
redis.call('set', KEYS[1], ARGV[1])
redis.call('set', KEYS[3], ARGV[2])
redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
redis.call('sadd', KEYS[5], ARGV[1])
return {1, ARGV[1]}
"""

_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class StaleEpoch(Exception):
    """A task for an older epoch of a move: the reaper has taken the move over."""


def pack(obj: Any) -> bytes:
    return cast(bytes, msgpack.packb(obj, use_bin_type=True))


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


def new_move_id() -> str:
    return f"mv-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


class Registry:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._create_move = self.r.register_script(_CREATE_MOVE)
        self._release_lock = self.r.register_script(_RELEASE_LOCK)

    @classmethod
    def from_url(cls, url: str) -> Registry:
        return cls(redis.Redis.from_url(url, socket_timeout=10, health_check_interval=30))

    def ping(self) -> bool:
        return bool(self.r.ping())

    # --- generic WATCH/MULTI update ---

    def _update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    raw = pipe.get(key)
                    if raw is None:
                        raise NotFound(f"{key} does not exist")
                    new = fn(unpack(cast(bytes, raw)))
                    pipe.multi()
                    pipe.set(key, pack(new))
                    pipe.execute()
                    return new
                except WatchError:
                    continue

    # --- clusters ---

    def put_cluster(self, cluster: Cluster) -> None:
        with self.r.pipeline() as p:
            p.set(keys.cluster(cluster.name), pack(cluster.to_dict()))
            p.sadd(keys.CLUSTERS, cluster.name)
            p.execute()

    def delete_cluster(self, name: str) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.cluster(name))
            p.srem(keys.CLUSTERS, name)
            p.execute()

    def clusters(self) -> dict[str, Cluster]:
        names = sorted(n.decode() for n in cast(set[bytes], self.r.smembers(keys.CLUSTERS)))
        if not names:
            return {}
        raws = cast(list[bytes | None], self.r.mget([keys.cluster(n) for n in names]))
        return {
            n: Cluster.from_dict(unpack(raw)) for n, raw in zip(names, raws, strict=True) if raw
        }

    def get_cluster(self, name: str) -> Cluster | None:
        raw = cast(bytes | None, self.r.get(keys.cluster(name)))
        return Cluster.from_dict(unpack(raw)) if raw else None

    # --- services ---

    def put_service(self, service: Service, *, create: bool = False) -> None:
        blob = pack(service.to_dict())
        if create:
            if not self.r.set(keys.service(service.name), blob, nx=True):
                raise Conflict(f"service {service.name!r} already exists")
        else:
            self.r.set(keys.service(service.name), blob)
        self.r.sadd(keys.SERVICES, service.name)

    def get_service(self, name: str) -> Service | None:
        raw, owner = cast(
            list[bytes | None], self.r.mget([keys.service(name), keys.service_lock(name)])
        )
        if raw is None:
            return None
        svc = Service.from_dict(unpack(raw))
        svc.moving = owner.decode() if owner else None
        return svc

    def services(self) -> dict[str, Service]:
        names = sorted(n.decode() for n in cast(set[bytes], self.r.smembers(keys.SERVICES)))
        result = {}
        for name in names:
            svc = self.get_service(name)
            if svc is not None:
                result[name] = svc
        return result

    def update_service(self, name: str, fn: Callable[[Service], None]) -> Service:
        def apply(d: dict[str, Any]) -> dict[str, Any]:
            svc = Service.from_dict(d)
            fn(svc)
            return svc.to_dict()

        return Service.from_dict(self._update(keys.service(name), apply))

    def delete_service(self, name: str) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.service(name))
            p.srem(keys.SERVICES, name)
            p.execute()

    # --- health ---

    def put_health(self, service: str, health: dict[str, Any], *, ttl_s: int) -> None:
        self.r.set(keys.service_health(service), pack(health), ex=ttl_s)

    def get_health(self, service: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, self.r.get(keys.service_health(service)))
        return dict(unpack(raw)) if raw else None

    # --- signals, policies, rebalancing ---

    def add_samples(self, samples: list[tuple[tuple[str, str, str | None, str | None], float,
                                              float]], *, keep_s: float,
                    keep_samples: int) -> None:
        """Append samples; each series keeps its last ``keep_s`` seconds, at most
        ``keep_samples`` samples (a bounded recent window)."""
        with self.r.pipeline(transaction=False) as p:
            touched = set()
            for (series, cluster, service, region), ts, value in samples:
                key = keys.signal(series, cluster, service, region)
                p.zadd(key, {pack([ts, value]): ts})
                touched.add((key, ts))
                p.sadd(keys.SIGNALS, key)
            for key in {k for k, _ in touched}:
                newest = max(ts for k, ts in touched if k == key)
                p.zremrangebyscore(key, "-inf", newest - keep_s)
                p.zremrangebyrank(key, 0, -keep_samples - 1)
                p.expire(key, int(keep_s) + 60)
            p.execute()

    def samples(self) -> dict[tuple[str, str, str | None, str | None], list[tuple[float, float]]]:
        """Every series with its samples, oldest first."""
        names = sorted(k.decode() for k in cast(set[bytes], self.r.smembers(keys.SIGNALS)))
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
            out[(series, cluster, service or None, region or None)] = [
                (float(ts), float(v)) for ts, v in (unpack(m) for m in members)]
        return out

    def note_move_start(self, service: str, ts: float) -> None:
        self.r.set(keys.last_move(service), repr(ts), ex=7 * 24 * 3600)

    def last_moves(self, services: list[str]) -> dict[str, float]:
        if not services:
            return {}
        raws = cast(list[bytes | None], self.r.mget([keys.last_move(s) for s in services]))
        return {s: float(r) for s, r in zip(services, raws, strict=True) if r}

    def put_policy(self, policy: dict[str, Any]) -> None:
        self.r.set(keys.policy(str(policy["id"])), pack(policy))
        self.r.sadd(keys.POLICIES, str(policy["id"]))

    def get_policy(self, policy_id: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, self.r.get(keys.policy(policy_id)))
        return dict(unpack(raw)) if raw else None

    def policies(self) -> list[dict[str, Any]]:
        ids = sorted(i.decode() for i in cast(set[bytes], self.r.smembers(keys.POLICIES)))
        return [p for p in (self.get_policy(i) for i in ids) if p is not None]

    def delete_policy(self, policy_id: str) -> bool:
        with self.r.pipeline() as p:
            p.delete(keys.policy(policy_id))
            p.srem(keys.POLICIES, policy_id)
            deleted, _ = p.execute()
        return bool(deleted)

    def get_blob(self, key: str) -> Any:
        raw = cast(bytes | None, self.r.get(key))
        return unpack(raw) if raw else None

    def put_blob(self, key: str, value: Any) -> None:
        self.r.set(key, pack(value))

    # --- chains ---

    def put_chain(self, chain: dict[str, Any]) -> None:
        name = str(chain["name"])
        if not self.r.set(keys.chain(name), pack(chain), nx=True):
            raise Conflict(f"chain {name!r} already exists")
        self.r.sadd(keys.CHAINS, name)

    def get_chain(self, name: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, self.r.get(keys.chain(name)))
        return dict(unpack(raw)) if raw else None

    def chains(self) -> list[dict[str, Any]]:
        names = sorted(n.decode() for n in cast(set[bytes], self.r.smembers(keys.CHAINS)))
        return [c for c in (self.get_chain(n) for n in names) if c is not None]

    def delete_chain(self, name: str) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.chain(name))
            p.srem(keys.CHAINS, name)
            p.execute()

    # --- links and allocations ---

    def put_link(self, link: Link) -> None:
        self.r.set(keys.link(link.id), pack(link.to_dict()))

    def get_link(self, link_id: str) -> Link:
        raw = cast(bytes | None, self.r.get(keys.link(link_id)))
        if raw is None:
            raise NotFound(f"link {link_id} does not exist")
        return Link.from_dict(unpack(raw))

    def delete_link(self, link_id: str) -> None:
        self.r.delete(keys.link(link_id))

    def links_of(self, service: Service) -> list[Link]:
        return [self.get_link(i) for i in service.links]

    def next_vni(self) -> int:
        """VNIs are never reused, so a stale device can never capture a new link's traffic."""
        return 1000 + int(self.r.incr(keys.VNI_SEQ))

    def next_link_block(self) -> int:
        return int(self.r.incr(keys.LINK_BLOCK_SEQ))

    def next_pod_index(self) -> int:
        return int(self.r.incr(keys.POD_SEQ))

    # --- moves ---

    def create_move(self, move: Move) -> Move:
        """Record a new move and take the service's lock, atomically."""
        status, owner = self._create_move(
            keys=[keys.service_lock(move.service), keys.service(move.service), keys.move(move.id),
                  keys.MOVES, keys.ACTIVE_MOVES],
            args=[move.id, pack(move.to_dict()), move.created_at],
        )
        if status == 0:
            raise NotFound(f"service {move.service!r} does not exist")
        if status == -1:
            raise Conflict(
                f"service {move.service!r} is already moving (move {owner.decode()})"
            )
        return move

    def get_move(self, move_id: str) -> Move:
        raw = cast(bytes | None, self.r.get(keys.move(move_id)))
        if raw is None:
            raise NotFound(f"move {move_id!r} does not exist")
        return Move.from_dict(unpack(raw))

    def update_move(
        self, move_id: str, fn: Callable[[Move], None], *, epoch: int | None = None
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

        return Move.from_dict(self._update(keys.move(move_id), apply))

    def moves(self, *, limit: int = 100) -> list[Move]:
        ids = cast(list[bytes], self.r.zrevrange(keys.MOVES, 0, limit - 1))
        return [self.get_move(i.decode()) for i in ids]

    def active_moves(self) -> list[Move]:
        ids = sorted(i.decode() for i in cast(set[bytes], self.r.smembers(keys.ACTIVE_MOVES)))
        result = []
        for i in ids:
            try:
                result.append(self.get_move(i))
            except NotFound:
                self.r.srem(keys.ACTIVE_MOVES, i)
        return result

    def finish_move(self, move_id: str, status: MoveStatus, *, error: str | None = None) -> Move:
        """Make the move terminal, release the service lock, drop it from the active set."""

        def done(m: Move) -> None:
            m.status = status
            m.finished_at = time.time()
            if error:
                m.error = error

        move = self.update_move(move_id, done)
        self._release_lock(keys=[keys.service_lock(move.service)], args=[move_id])
        self.r.srem(keys.ACTIVE_MOVES, move_id)
        self.r.delete(keys.move_lease(move_id))
        return move

    def take_lock(self, service: str, owner: str) -> bool:
        """Take a service's lock for work other than a move (its removal)."""
        return bool(self.r.set(keys.service_lock(service), owner, nx=True))

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
        self.r.set(keys.move_lease(move_id), token, px=int(ttl_s * 1000))

    def lease_alive(self, move_id: str) -> bool:
        return bool(self.r.exists(keys.move_lease(move_id)))

    def drop_lease(self, move_id: str, token: str) -> None:
        self._release_lock(keys=[keys.move_lease(move_id)], args=[token])

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

    @staticmethod
    def _event(entry: bytes, fields: dict[bytes, bytes]) -> Event:
        d = unpack(fields[b"e"])
        return Event(id=entry.decode(), **d)

    def iter_events(self, move_id: str, *, block_ms: int = 1000) -> Iterator[Event]:
        """All events of a move, then new ones as they come, until the move is terminal."""
        last = "0"
        while True:
            batch = self.wait_events(move_id, after=last, block_ms=block_ms)
            for ev in batch:
                last = ev.id
                yield ev
            if not batch and self.get_move(move_id).status.terminal:
                # one last read: the terminal event may have landed just now
                for ev in self.events(move_id, after=last):
                    yield ev
                return
