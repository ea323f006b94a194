"""Service chains: the chain record (its elements); the services it made are in the fleet."""

from __future__ import annotations

from typing import cast

from mobility import keys
from mobility.chains import Chain
from mobility.errors import Conflict
from mobility.store.base import StoreBase, pack, unpack


class ChainStore(StoreBase):

    def put_chain(self, chain: Chain) -> None:
        if not self.r.set(keys.chain(chain.name), pack(chain.to_dict()), nx=True):
            raise Conflict(f"chain {chain.name!r} already exists")
        self.r.sadd(keys.CHAINS, chain.name)

    def get_chain(self, name: str) -> Chain | None:
        raw = cast(bytes | None, self.r.get(keys.chain(name)))
        return Chain.from_dict(unpack(raw)) if raw else None

    def chains(self) -> list[Chain]:
        return [c for c in (self.get_chain(n) for n in self._names(keys.CHAINS)) if c is not None]

    def delete_chain(self, name: str) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.chain(name))
            p.srem(keys.CHAINS, name)
            p.execute()
