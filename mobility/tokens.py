"""API tokens: roles, how a token looks, how it is kept.

A token is ``smt_<id>_<secret>``: the id names its record, the secret (32 random bytes,
url-safe) is shown once, at creation, and only its SHA-256 digest is stored. A plain digest is
enough here (no slow hash): the secret is random and long, not a password a person chose, so
there is nothing to guess. Roles are ordered: ``viewer`` reads, ``operator`` also moves,
aborts, deploys and sends signals, ``admin`` also manages clusters, policies, schedules and
tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from mobility.errors import Invalid

PREFIX = "smt"
_TOKEN = re.compile(rf"^{PREFIX}_(?P<id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
MAX_TTL_S = 10 * 365 * 24 * 3600


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Token:
    """A token's record; the secret itself is never kept, only its digest."""

    id: str
    role: Role
    name: str
    created_at: float
    expires_at: float | None
    digest: str

    def __repr__(self) -> str:  # the digest is not a secret, but it has no business in logs
        return f"Token(id={self.id!r}, role={self.role!r}, name={self.name!r})"

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.digest, digest(secret))

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "role": str(self.role), "name": self.name,
                "created_at": self.created_at, "expires_at": self.expires_at,
                "digest": self.digest}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Token:
        exp = d.get("expires_at")
        return cls(id=str(d["id"]), role=Role(str(d["role"])), name=str(d.get("name", "")),
                   created_at=float(str(d["created_at"])),
                   expires_at=float(str(exp)) if exp is not None else None,
                   digest=str(d["digest"]))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint(*, role: Role, name: str = "", ttl_s: float | None = None,
         now: float | None = None) -> tuple[Token, str]:
    """A new token: its record (to store) and the full token string (to show once)."""
    if ttl_s is not None and not 60 <= ttl_s <= MAX_TTL_S:
        raise Invalid(f"ttl_s must be between 60 s and {MAX_TTL_S} s")
    if len(name) > 64 or not re.fullmatch(r"[A-Za-z0-9 ._@-]*", name):
        raise Invalid("a token's name is at most 64 letters, digits, spaces and ._@-")
    now = time.time() if now is None else now
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    record = Token(id=token_id, role=role, name=name, created_at=now,
                   expires_at=None if ttl_s is None else now + ttl_s, digest=digest(secret))
    return record, f"{PREFIX}_{token_id}_{secret}"


def parse(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, None for anything else."""
    m = _TOKEN.fullmatch(token)
    return (m.group("id"), m.group("secret")) if m else None
