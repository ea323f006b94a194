"""Move notifications for applications, as ETSI MEC's application mobility service sends them.

An application (or whoever runs it) subscribes a URL to some of a move's events; the
orchestrator then POSTs each event to it, signed, retried with backoff, every attempt recorded
(:mod:`workers.notifying` delivers, :mod:`mobility.store.subscriptions` keeps the records).

This module holds what needs no I/O but name resolution: the records, the URL whitelist, the
signature, the backoff schedule and the mapping from the engine's journal to the events.

**The URL whitelist.** A subscription makes the orchestrator call out to an address a caller
chose: that is how a request reaches a metadata service, a Redis on loopback or a node agent
inside the lab (server-side request forgery). So a URL is ``http`` or ``https``, ASCII, at
most :data:`MAX_URL_CHARS`, no userinfo, no fragment, a port (if given) in 1-65535, a host
that is a DNS name or an address written in its one canonical form (``http://2130706433/``,
``http://0x7f.1/`` and ``http://127.1/`` are refused: resolvers read them as 127.0.0.1, and
readers of the URL do not); and *every* address the host resolves to must be globally
routable: not loopback, link-local, private, multicast, unspecified, reserved or otherwise
non-global, including the IPv4 address an IPv6 one carries (``::ffff:127.0.0.1``, NAT64,
6to4, Teredo). An admin lets some through with ``MOBILITY_SUBSCRIPTION_ALLOW_HOSTS`` (CIDRs or
host names). The host is resolved when the subscription is made *and* at each delivery, and
the delivery connects to an address that was checked (no second lookup a rebinding DNS could
answer differently).

**The signature.** ``X-Mobility-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw body
with the subscription's secret (shown once, when it is made). The body carries the event's id
and time, so a receiver that checks the signature and remembers the ids it has seen is safe
from a forged or replayed event (:func:`verify` is what it runs).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mobility.errors import Conflict, Invalid
from mobility.models import Move

STARTED = "move.started"
CUTOVER = "move.cutover"
SUCCEEDED = "move.succeeded"
ROLLED_BACK = "move.rolled_back"
FAILED = "move.failed"
# In the order a move goes through them: a subscription gets a move's events in this order
# (a delivery waits, a while, for an earlier one of the same move still being tried).
EVENTS = (STARTED, CUTOVER, SUCCEEDED, ROLLED_BACK, FAILED)
SEQUENCE = {event: i for i, event in enumerate(EVENTS)}

MAX_URL_CHARS = 2048
MAX_SUBSCRIPTIONS = 100  # each event fans out to every subscription: a bound on the work
MAX_DELIVERIES_KEPT = 50  # attempts recorded per subscription (newest first)
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
SIGNATURE_HEADER = "X-Mobility-Signature"
TIMESTAMP_HEADER = "X-Mobility-Timestamp"
EVENT_ID_HEADER = "X-Mobility-Event-Id"
EVENT_HEADER = "X-Mobility-Event"
ATTEMPT_HEADER = "X-Mobility-Attempt"

_SUB_ID = re.compile(r"^sub-[0-9a-f]{16}$")
SUBSCRIPTION_ID = _SUB_ID.pattern
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64, RFC 6052/8215)
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


# --- errors ---


class UrlRefused(Invalid):
    """A subscription's URL breaks the whitelist (or reaches an address it may not): a 422
    when a subscription is made; a delivery to it is given up, not retried."""


class UrlUnresolvable(Invalid):
    """The URL's host does not resolve now: a 422 when a subscription is made; a delivery is
    retried (the name may come back)."""

    retryable = True


# --- records ---


def new_subscription_id() -> str:
    return f"sub-{secrets.token_hex(8)}"


def valid_subscription_id(value: object) -> bool:
    return isinstance(value, str) and _SUB_ID.fullmatch(value) is not None


def new_secret() -> str:
    """A signing secret: 32 random bytes, url-safe; shown once, stored sealed."""
    return f"whsec_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class Subscription:
    """What a subscription is; its secret is not part of it (it is sealed apart, and only
    the delivering worker opens it), so no repr or log of one can show it."""

    id: str
    url: str
    events: tuple[str, ...]
    created_at: float
    service: str | None = None  # only this service's moves; None: every move
    created_by: str = ""  # the id of the token that made it

    def wants(self, event: str, service: str) -> bool:
        return event in self.events and (self.service is None or self.service == service)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "events": list(self.events),
                "created_at": self.created_at, "service": self.service,
                "created_by": self.created_by}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Subscription:
        return cls(id=str(d["id"]), url=str(d["url"]),
                   events=tuple(str(e) for e in d.get("events") or ()),
                   created_at=float(d["created_at"]), service=d.get("service"),
                   created_by=str(d.get("created_by") or ""))


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver one event: what it got (an HTTP status, or an error) and what
    came of it (``delivered``, ``retrying`` in ``next_in_s``, ``gave_up``)."""

    ts: float
    event: str
    event_id: str
    move_id: str
    attempt: int
    outcome: str
    status: int | None = None
    error: str | None = None
    next_in_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "event": self.event, "event_id": self.event_id,
                "move_id": self.move_id, "attempt": self.attempt, "outcome": self.outcome,
                "status": self.status, "error": self.error, "next_in_s": self.next_in_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Delivery:
        return cls(ts=float(d["ts"]), event=str(d["event"]), event_id=str(d["event_id"]),
                   move_id=str(d["move_id"]), attempt=int(d["attempt"]),
                   outcome=str(d["outcome"]), status=d.get("status"), error=d.get("error"),
                   next_in_s=d.get("next_in_s"))


# --- the URL whitelist ---


@dataclass(frozen=True)
class Endpoint:
    """A URL that passed the syntax rules; not yet resolved."""

    scheme: str
    host: str  # lowercase, no brackets, no trailing dot
    port: int
    explicit_port: bool
    target: str  # path and query, as sent on the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.explicit_port else host

    @property
    def literal(self) -> Address | None:
        """The host as an address, when it is one."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


@dataclass(frozen=True)
class Target:
    """An endpoint with the addresses it resolved to, every one checked: what a delivery
    connects to (in order, the first that answers), sending ``Host: endpoint.host_header``."""

    endpoint: Endpoint
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class AllowList:
    """The admin's exceptions (``MOBILITY_SUBSCRIPTION_ALLOW_HOSTS``): networks any resolved
    address may fall in, and host names whose addresses are all taken as they are."""

    networks: tuple[Network, ...] = ()
    names: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        networks: list[Network] = []
        names: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.removesuffix(".")
            if not _hostname(name):
                raise Conflict(f"MOBILITY_SUBSCRIPTION_ALLOW_HOSTS entry {raw!r} is neither a "
                               "CIDR nor a host name; fix the setting")
            names.add(name)
        return cls(tuple(networks), frozenset(names))

    def permits(self, host: str, addr: Address) -> bool:
        if host in self.names:
            return True
        candidates = [addr, *_embedded(addr)]
        return any(a.version == n.version and a in n for a in candidates for n in self.networks)


def _hostname(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    # A numeric last label (no top-level domain is one) is how "2130706433", "0x7f.1" or
    # "127.1" look: resolvers read them as addresses, so they are not names.
    return _NUMERIC_LABEL.fullmatch(labels[-1]) is None


def check_url(url: str) -> Endpoint:
    """The syntax rules (no resolution); :class:`UrlRefused` saying which one broke."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("the URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"the URL is longer than {MAX_URL_CHARS} characters")
    if not url.isascii() or any(ord(c) <= 32 or ord(c) == 127 for c in url) or "\\" in url:
        raise UrlRefused("the URL may hold printable ASCII only (no space, no backslash; "
                         "write an international name in its xn-- form)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. brackets around something not an IPv6 address
        raise UrlRefused(f"the URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused(f"scheme {parts.scheme!r}: only http and https are allowed")
    if "@" in parts.netloc:
        raise UrlRefused("the URL may not carry a user name or password")
    if parts.fragment or url.endswith("#"):
        raise UrlRefused("the URL may not carry a fragment (#...)")
    try:
        port = parts.port
    except ValueError:
        raise UrlRefused("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise UrlRefused("the port must be a number from 1 to 65535")
    host = (parts.hostname or "").removesuffix(".")
    if not host:
        raise UrlRefused("the URL names no host")
    if parts.netloc.startswith("["):
        if "%" in host:
            raise UrlRefused("an IPv6 address may not carry a zone (%...)")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlRefused(f"[{host}] is not an IPv6 address") from None
    elif ":" in host:
        raise UrlRefused("an IPv6 address is written in brackets: http://[2001:db8::1]/")
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _hostname(host):
                raise UrlRefused(
                    f"host {host!r} is neither a DNS name nor an IPv4 address in dotted "
                    "decimal (a.b.c.d; no hexadecimal, octal, single-number or short forms)"
                ) from None
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return Endpoint(scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80),
                    explicit_port=port is not None, target=target)


def _embedded(addr: Address) -> Iterator[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, NAT64, 6to4, Teredo)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return
    if addr.ipv4_mapped is not None:
        yield addr.ipv4_mapped
    if any(addr in n for n in _NAT64):
        yield ipaddress.IPv4Address(addr.packed[-4:])
    if addr.sixtofour is not None:
        yield addr.sixtofour
    if addr.teredo is not None:
        yield from addr.teredo


def refusal(addr: Address) -> str | None:
    """Why a delivery may not go to ``addr`` (a class of address), or None when it may."""
    for inner in _embedded(addr):
        why = refusal(inner)
        if why is not None:
            return f"{why} (inside {addr})"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_reserved:
        return "reserved"
    if addr.is_private:
        return "private"
    if not addr.is_global:
        return "not globally routable"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system's resolver gives for ``host`` (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def resolve(endpoint: Endpoint, *, allow: AllowList,
            resolver: Resolver = system_resolver) -> Target:
    """Resolve the endpoint's host and check every address; :class:`UrlRefused` when one may
    not be reached, :class:`UrlUnresolvable` when the host does not resolve."""
    literal = endpoint.literal
    if literal is not None:
        found = [str(literal)]
    else:
        try:
            found = resolver(endpoint.host, endpoint.port)
        except (OSError, UnicodeError) as exc:
            raise UrlUnresolvable(f"host {endpoint.host!r} does not resolve: {exc}") from None
    addresses: list[str] = []
    for raw in found:
        try:
            addr = ipaddress.ip_address(raw.split("%", 1)[0])
        except ValueError:
            raise UrlRefused(f"host {endpoint.host!r} resolved to {raw!r}, not an address") \
                from None
        if not allow.permits(endpoint.host, addr):
            why = refusal(addr)
            if why is not None:
                raise UrlRefused(
                    f"host {endpoint.host!r} resolves to {addr}, a {why} address: "
                    "notifications go to public addresses only, unless an admin allows this "
                    "one (MOBILITY_SUBSCRIPTION_ALLOW_HOSTS)")
        if str(addr) not in addresses:
            addresses.append(str(addr))
    if not addresses:
        raise UrlUnresolvable(f"host {endpoint.host!r} resolves to no address")
    return Target(endpoint=endpoint, addresses=tuple(addresses))


def check_and_resolve(url: str, *, allow: AllowList,
                      resolver: Resolver = system_resolver) -> Target:
    """The whole whitelist: the syntax rules, then every resolved address."""
    return resolve(check_url(url), allow=allow, resolver=resolver)


# --- signing ---


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """What a receiver runs on the raw body it got (constant-time comparison)."""
    return hmac.compare_digest(sign(body, secret), header.strip())


# --- retries ---


def backoff(attempt: int, *, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S,
            ) -> float:
    """The wait after failed attempt ``attempt`` (1-based): base, 2 base, 4 base, ... capped."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    return float(min(max_s, base_s * 2 ** min(attempt - 1, 32)))


def schedule(max_attempts: int, *, base_s: float = BACKOFF_BASE_S,
             max_s: float = BACKOFF_MAX_S) -> list[float]:
    """The waits between ``max_attempts`` attempts (one fewer than attempts)."""
    return [backoff(a, base_s=base_s, max_s=max_s) for a in range(1, max_attempts)]


# --- from the engine's journal to events ---


def event_for(kind: str, *, phase: str | None, detail: str) -> str | None:
    """The notification a journal entry makes, or None (most make none)."""
    if kind == "phase_started" and phase == "admit":
        return STARTED
    if kind == "cutover_confirmed":
        return CUTOVER
    if kind == "status":
        if detail == "succeeded":
            return SUCCEEDED
        if detail == "rolled_back":
            return ROLLED_BACK
        if detail.startswith("failed"):
            return FAILED
    return None


def event_id(move_id: str, event: str) -> str:
    """One id per (move, event), the same for every subscription and every attempt: what a
    receiver dedupes on."""
    return f"{move_id}.{event}"


def payload(*, move: Move, event: str, ts: float) -> dict[str, Any]:
    """A notification's body (as data): the event, the move, its timings so far."""
    return {
        "event_id": event_id(move.id, event),
        "event": event,
        "sequence": SEQUENCE[event],
        "timestamp": round(ts, 6),
        "move_id": move.id,
        "service": move.service,
        "from_cluster": move.from_cluster,
        "to_cluster": move.to_cluster,
        "status": str(move.status),
        "phase": str(move.phase) if move.phase else None,
        "phase_ms": dict(move.phase_ms),
        "freeze_ms": move.freeze_ms,
        "total_ms": move.total_ms,
        "origin": move.origin,
        "error": move.error,
    }


def encode(body: Mapping[str, Any]) -> bytes:
    """The raw body sent (and signed): compact JSON, keys sorted, the same at every attempt."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
