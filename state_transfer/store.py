"""The application's state: a mapping with a version counter and dirty-key tracking.

Every write bumps the store's version and stamps the key with it; a delete leaves a tombstone
with its version. ``changes_since(v)`` is then exactly what a pre-copy round must ship: the
keys written or deleted after version ``v``. While the store is frozen, writers wait, so the
last delta taken under the freeze is final.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import msgpack


class StateStore:
    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._stamp: dict[str, int] = {}
        self._tombstones: dict[str, int] = {}
        self._version = 0
        self._lock = threading.RLock()
        self._thawed = threading.Event()
        self._thawed.set()

    # --- the application's side ---

    @property
    def lock(self) -> threading.RLock:
        """Hold it to read-modify-write several keys as one step."""
        return self._lock

    @property
    def version(self) -> int:
        return self._version

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._values)

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Hold the lock, taken only while the store is not frozen.

        The frozen check is made again under the lock: ``freeze`` clears the flag under it, so
        a writer that passed the wait just before a freeze cannot land its write after it.
        """
        while True:
            self._thawed.wait()
            self._lock.acquire()
            if self._thawed.is_set():
                break
            self._lock.release()
        try:
            yield
        finally:
            self._lock.release()

    def set(self, key: str, value: Any) -> int:
        """Write ``key``; waits while the store is frozen. Returns the new version."""
        with self._write_lock():
            self._version += 1
            self._values[key] = value
            self._stamp[key] = self._version
            self._tombstones.pop(key, None)
            return self._version

    def delete(self, key: str) -> int:
        with self._write_lock():
            if key not in self._values:
                return self._version
            self._version += 1
            del self._values[key]
            del self._stamp[key]
            self._tombstones[key] = self._version
            return self._version

    # --- the agent's side ---

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    def freeze(self) -> int:
        """Stop writers; returns the version the state is frozen at."""
        with self._lock:
            self._thawed.clear()
            return self._version

    def resume(self) -> None:
        self._thawed.set()

    def changes_since(self, version: int) -> tuple[int, list[str], list[str]]:
        """(current version, keys written after ``version``, keys deleted after it)."""
        with self._lock:
            written = [k for k, v in self._stamp.items() if v > version]
            deleted = [k for k, v in self._tombstones.items() if v > version]
            return self._version, written, deleted

    def apply(self, key: str, value: Any) -> None:
        """Restore one key from a transfer; never blocked by a freeze (the target is not live)."""
        with self._lock:
            self._version += 1
            self._values[key] = value
            self._stamp[key] = self._version
            self._tombstones.pop(key, None)

    def apply_delete(self, key: str) -> None:
        with self._lock:
            if key in self._values:
                self._version += 1
                del self._values[key]
                del self._stamp[key]
                self._tombstones[key] = self._version

    def items(self) -> Iterator[tuple[str, Any]]:
        with self._lock:
            snapshot = list(self._values.items())
        yield from snapshot

    def digest(self, prefix: str = "") -> str:
        """A digest of the state (keys and values, of the keys starting with ``prefix``),
        equal on both sides after a move."""
        h = hashlib.sha256()
        with self._lock:
            for key in sorted(k for k in self._values if k.startswith(prefix)):
                # lengths first, so that no two different states hash the same bytes
                raw_key = key.encode()
                value = msgpack.packb(self._values[key], use_bin_type=True)
                h.update(len(raw_key).to_bytes(8, "big") + raw_key)
                h.update(len(value).to_bytes(8, "big") + value)
        return h.hexdigest()

    def nbytes(self) -> int:
        """Approximate size of the state as shipped (msgpack bytes of keys and values)."""
        with self._lock:
            return sum(len(k) + len(msgpack.packb(v, use_bin_type=True))
                       for k, v in self._values.items())
