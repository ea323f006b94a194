"""What an agent ships: the :class:`Transferable` protocol, and :class:`StoreState`, a
:class:`StateStore` seen through it (a :class:`DirectoryState` provides it as it is).

Standard library and msgpack only: it runs inside application containers.
"""

from __future__ import annotations

from typing import Protocol

import msgpack

from state_transfer.errors import StateTransferError
from state_transfer.store import StateStore


class Transferable(Protocol):
    """What an agent needs of a state: the store and the directory both provide it."""

    @property
    def version(self) -> int: ...

    @property
    def frozen(self) -> bool: ...

    def freeze(self) -> int: ...

    def resume(self) -> None: ...

    def changes_since(self, version: int) -> tuple[int, list[str], list[str]]: ...

    def encode(self, key: str) -> bytes | None: ...

    def decode_apply(self, key: str, data: bytes) -> None: ...

    def apply_delete(self, key: str) -> None: ...

    def digest(self, prefix: str = "") -> str: ...

    def count(self) -> int: ...


RAW, PACKED = b"\x01", b"\x00"


class StoreState:
    """A :class:`StateStore` seen as a Transferable.

    A value travels as one tag byte and then either the bytes themselves (``bytes`` values,
    the bulk of most states: packing 64 KiB through msgpack costs several times copying it) or
    its msgpack encoding (anything else).
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store

    @property
    def version(self) -> int:
        return self.store.version

    @property
    def frozen(self) -> bool:
        return self.store.frozen

    def freeze(self) -> int:
        return self.store.freeze()

    def resume(self) -> None:
        self.store.resume()

    def changes_since(self, version: int) -> tuple[int, list[str], list[str]]:
        return self.store.changes_since(version)

    def encode(self, key: str) -> bytes | None:
        if key not in self.store:
            return None
        value = self.store.get(key)
        if isinstance(value, bytes):
            return RAW + value
        return PACKED + bytes(msgpack.packb(value, use_bin_type=True))

    def decode_apply(self, key: str, data: bytes) -> None:
        if data[:1] == RAW:
            self.store.apply(key, bytes(data[1:]))
        elif data[:1] == PACKED:
            self.store.apply(key, msgpack.unpackb(data[1:], raw=False))
        else:
            raise StateTransferError(f"value of {key!r} has an unknown encoding tag")

    def apply_delete(self, key: str) -> None:
        self.store.apply_delete(key)

    def digest(self, prefix: str = "") -> str:
        return self.store.digest(prefix)

    def count(self) -> int:
        return len(self.store)
