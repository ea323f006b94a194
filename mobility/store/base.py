"""What every part of the registry shares: msgpack packing and the WATCH/MULTI update.

A state change reads a record, changes it and writes it back only if nobody wrote in between
(WATCH/MULTI), retrying on a lost race; commands that must land with it (releasing a lock with
a move's end) go into the same MULTI, so no reader ever sees one without the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import msgpack
import redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from mobility.errors import NotFound

T = TypeVar("T")


def pack(obj: Any) -> bytes:
    return cast(bytes, msgpack.packb(obj, use_bin_type=True))


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


class StoreBase:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def ping(self) -> bool:
        return bool(self.r.ping())

    def _update(self, key: str, fn: Callable[[Any], Any], *, watch: Sequence[str] = (),
                also: Callable[[Pipeline, Any, dict[str, bytes | None]], None] | None = None,
                ) -> Any:
        """Change the record at ``key`` with ``fn`` under WATCH; returns the new value.

        ``watch`` names more keys to watch; ``also(pipe, new, watched)`` queues further
        commands in the same transaction, given the values the watched keys had.
        """
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, *watch)  # type: ignore[no-untyped-call]
                    raw = pipe.get(key)
                    if raw is None:
                        raise NotFound(f"{key} does not exist")
                    seen = {k: cast(bytes | None, pipe.get(k)) for k in watch}
                    new = fn(unpack(cast(bytes, raw)))
                    pipe.multi()
                    pipe.set(key, pack(new))
                    if also is not None:
                        also(pipe, new, seen)
                    pipe.execute()
                    return new
                except WatchError:
                    continue

    def _names(self, set_key: str) -> list[str]:
        return sorted(n.decode() for n in cast(set[bytes], self.r.smembers(set_key)))
