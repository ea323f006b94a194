"""Cluster credentials a caller sent, sealed at rest, for the one task that needs them.

The API checks a join's (or an unjoin's) kubeconfig (:mod:`mobility.kubeconfigs`), stores the
parsed credentials here and sends the task only their id: no secret sits in a task's arguments
(Celery's ``argsrepr``, the broker's messages) or in a log. The worker reads them, uses them
and deletes them when the task ends; a TTL removes those of a task that never ran.

Sealing: AES-256-GCM (``cryptography``), a random 96-bit nonce per record, the record's id as
associated data (a sealed record copied to another id does not open). The key is
``MOBILITY_CREDENTIALS_KEY`` (32 bytes, base64; ``openssl rand -base64 32``): see
:meth:`Sealer.from_settings` for what happens when it is unset.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from typing import cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mobility import keys
from mobility.errors import Conflict, MobilityError
from mobility.kubeconfigs import MemberCredentials
from mobility.settings import Settings
from mobility.store.base import StoreBase, pack, unpack

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = b"c1"  # the record format: version, nonce, ciphertext and tag
_DEV_SALT = b"service-mobility credentials key (development)"


class CredentialsUnreadable(MobilityError):
    """Stored credentials do not open with this key (changed key, or tampered record)."""


class Sealer:
    """AES-256-GCM with one key; its ``repr`` never shows the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a credentials key has {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        """The sealer of this deployment.

        ``MOBILITY_CREDENTIALS_KEY`` set: that key (32 bytes, base64, standard or URL-safe
        alphabet). Unset in production: :class:`~mobility.errors.Conflict`, so nothing is
        stored (a join or unjoin with a kubeconfig answers 409 saying what to set). Unset in
        development: a key derived with HKDF-SHA256 from ``MOBILITY_REDIS_URL``, so an API and
        workers that share one Redis URL agree with no setup. That key keeps the credentials
        out of Redis dumps and task arguments, but anyone with the URL and this code can
        derive it: that is why production needs a key of its own. Components that reach Redis
        as different users (:mod:`mobility.store.acl`) have different URLs, so they need the
        key set even in development (``cli/stack.py`` writes one); otherwise the worker's
        answer says the credentials do not open.
        """
        raw = settings.credentials_key.get_secret_value().strip()
        if raw:
            try:
                key = base64.b64decode(raw.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != KEY_BYTES:
                raise Conflict(f"MOBILITY_CREDENTIALS_KEY must be {KEY_BYTES} bytes in base64 "
                               "(openssl rand -base64 32)")
            return cls(key)
        if settings.environment == "production":
            raise Conflict("this deployment cannot store cluster credentials: "
                           "MOBILITY_CREDENTIALS_KEY is not set (32 bytes in base64, from "
                           "openssl rand -base64 32, the same for the API and the workers)")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_DEV_SALT,
                    info=b"credentials-key v1")
        return cls(hkdf.derive(settings.redis_url.get_secret_value().encode()))

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, *, aad: bytes) -> bytes:
        if not blob.startswith(VERSION) or len(blob) < len(VERSION) + NONCE_BYTES + 16:
            raise CredentialsUnreadable("stored credentials are not in a known format")
        nonce = blob[len(VERSION):len(VERSION) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(VERSION) + NONCE_BYTES:], aad)
        except InvalidTag:
            raise CredentialsUnreadable(
                "stored credentials do not open with this MOBILITY_CREDENTIALS_KEY (do the "
                "API and the workers have the same key?)") from None


def new_credentials_id() -> str:
    return f"cred-{secrets.token_hex(16)}"


class CredentialStore(StoreBase):

    def put_credentials(self, creds: MemberCredentials, *, sealer: Sealer, ttl_s: int) -> str:
        """Seal and store ``creds`` for ``ttl_s`` seconds; their id, for a task's arguments."""
        cred_id = new_credentials_id()
        blob = sealer.seal(pack(creds.to_dict()), aad=cred_id.encode())
        self.r.set(keys.credentials(cred_id), blob, ex=max(1, int(ttl_s)))
        return cred_id

    def get_credentials(self, cred_id: str, *, sealer: Sealer) -> MemberCredentials | None:
        """The credentials stored as ``cred_id``; None when gone (used, or expired)."""
        blob = cast(bytes | None, self.r.get(keys.credentials(cred_id)))
        if blob is None:
            return None
        return MemberCredentials.from_dict(unpack(sealer.open(blob, aad=cred_id.encode())))

    def delete_credentials(self, cred_id: str) -> bool:
        return bool(self.r.delete(keys.credentials(cred_id)))
