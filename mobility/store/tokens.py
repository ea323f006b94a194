"""API token records (digests only, see :mod:`mobility.tokens`) and per-token rate windows."""

from __future__ import annotations

from typing import cast

from mobility import keys
from mobility.store.base import StoreBase, pack, unpack
from mobility.tokens import Token


class TokenStore(StoreBase):

    def put_token(self, token: Token) -> None:
        with self.r.pipeline() as p:
            p.set(keys.token(token.id), pack(token.to_dict()))
            p.sadd(keys.TOKENS, token.id)
            if token.expires_at is not None:
                p.expireat(keys.token(token.id), int(token.expires_at) + 1)
            p.execute()

    def get_token(self, token_id: str) -> Token | None:
        raw = cast(bytes | None, self.r.get(keys.token(token_id)))
        return Token.from_dict(unpack(raw)) if raw else None

    def tokens(self) -> list[Token]:
        out = []
        for token_id in self._names(keys.TOKENS):
            t = self.get_token(token_id)
            if t is None:
                self.r.srem(keys.TOKENS, token_id)  # expired
            else:
                out.append(t)
        return out

    def revoke_token(self, token_id: str) -> bool:
        with self.r.pipeline() as p:
            p.delete(keys.token(token_id))
            p.srem(keys.TOKENS, token_id)
            deleted, _ = p.execute()
        return bool(deleted)

    def hit(self, token_id: str, what: str, *, window_s: int) -> int:
        """Count one request of ``what`` by the token in the current window; the count."""
        key = keys.rate(token_id, what)
        with self.r.pipeline() as p:
            p.incr(key)
            p.expire(key, window_s, nx=True)
            count, _ = p.execute()
        return int(count)
