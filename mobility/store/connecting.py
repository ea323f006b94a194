"""Every Redis client of the control plane is made here: a plain one, or one through Sentinel.

Why one place: with Redis Sentinel the master can change under a running process (its host
lost, or ``SENTINEL FAILOVER``). A client bound to an address would keep talking to a dead or
demoted server; a Sentinel-managed client asks the sentinels for the master on every new
connection, and a ``READONLY`` answer (a demoted master) drops the connection so the next one
goes to the new master. The retry policy below covers the seconds a failover takes (the
sentinels agreeing the master is down, electing and promoting a replica): commands that fail
with a connection, timeout or read-only error are retried with capped exponential backoff.

A command is retried after an error whose effect is unknown (the reply was lost), as redis-py
does by default: the registry's writes are idempotent by id or guarded by WATCH/Lua, so a
replay is "already done", not a second effect.

With sentinels set, the URL gives only who connects (user, password) and the database; the
host and port in it are ignored, the sentinels say where the master is.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from mobility.errors import Invalid
from mobility.settings import Settings, get_settings

# Long enough to ride out a failover (the lab's sentinels: 1 s to agree the master is down,
# then an election and a promotion, a few seconds in all): about 30 s of retries.
RETRIES = 40
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
RETRY_ON = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)


@dataclass(frozen=True)
class SentinelConfig:
    """Where the sentinels are, the master's name, and the sentinels' password (if any).

    The password is kept out of ``repr`` (it is never logged)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    password: str = ""

    def __repr__(self) -> str:
        return f"SentinelConfig(sentinels={self.sentinels!r}, master={self.master!r})"

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SentinelConfig | None:
        """The settings' sentinels, or None when Redis is used without Sentinel."""
        s = settings or get_settings()
        if not s.redis_sentinels:
            return None
        return cls(sentinels=tuple(parse_address(a) for a in s.redis_sentinels),
                   master=s.redis_sentinel_master,
                   password=s.redis_sentinel_password.get_secret_value())

    def sentinel_kwargs(self) -> dict[str, object]:
        """What a client passes to each sentinel connection (kombu's ``sentinel_kwargs``)."""
        kw: dict[str, object] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}
        if self.password:
            kw["password"] = self.password
        return kw


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` into its parts; a person's typo is a message, not a traceback."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"{address!r} is not a sentinel address: write host:port")
    return host.strip("[]"), int(port)


class MasterConnection(SentinelManagedConnection):
    """A connection that asks the sentinels for the master every time it (re)connects.

    Why: redis-py 8.1 reconnects a dropped connection from ``send_packed_command`` through
    ``connect_check_health``, which reuses the address of the last connect, not through
    ``SentinelManagedConnection.connect``; after a failover every retry then went to the
    old (frozen) master until the retries ran out (seen on the lab: a write hung for
    minutes while the sentinels had named the new master within seconds)."""

    def connect_check_health(self, check_health: bool = True,
                             retry_socket_connect: bool = True) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health,
                                     retry_socket_connect=retry_socket_connect)


def retry_policy() -> Retry:
    """The retry every client gets: capped exponential backoff over a failover's duration."""
    return Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), RETRIES,
                 supported_errors=RETRY_ON)


def connect(url: str, *, sentinel: SentinelConfig | None = None,
            socket_timeout: float | None = 10.0,
            health_check_interval: int = 30) -> redis.Redis:
    """A client of ``url``'s user on the master: through ``sentinel`` when given, else
    directly. Callers that follow the settings pass ``SentinelConfig.from_settings()``."""
    if sentinel is None:
        # as before Sentinel: redis-py's own default retry (a single server that is down is
        # reported at once, e.g. by the API's health check, not waited for)
        return redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                    health_check_interval=health_check_interval)
    parts = urlsplit(url)
    db = int(parts.path.lstrip("/") or 0)
    manager = Sentinel(list(sentinel.sentinels), sentinel_kwargs=sentinel.sentinel_kwargs())  # type: ignore[no-untyped-call]
    client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        sentinel.master, redis_class=redis.Redis, db=db, connection_class=MasterConnection,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        socket_timeout=socket_timeout, socket_connect_timeout=5.0,
        health_check_interval=health_check_interval,
        retry=retry_policy(), retry_on_error=list(RETRY_ON))
    return client


def celery_conf(url: str, sentinel: SentinelConfig, *,
                transport_options: dict[str, object]) -> dict[str, object]:
    """Celery settings for the broker (kombu's ``sentinel://`` transport), the result backend
    (Celery's sentinel backend) and beat's schedule (celery-redbeat's ``redis-sentinel://``),
    all on ``url``'s user through ``sentinel``; ``transport_options`` are kept and extended.

    kombu and Celery read the sentinels from a ``;``-separated list of ``sentinel://`` URLs,
    each carrying the master's user and password (the sentinels' own go in
    ``sentinel_kwargs``); redbeat takes its sentinels in ``redbeat_redis_options``."""
    parts = urlsplit(url)
    db = int(parts.path.lstrip("/") or 0)
    auth = parts.netloc.rpartition("@")[0]
    prefix = f"{auth}@" if auth else ""
    chain = ";".join(f"sentinel://{prefix}{host}:{port}/{db}" for host, port in sentinel.sentinels)
    options = {**transport_options, "master_name": sentinel.master,
               "sentinel_kwargs": sentinel.sentinel_kwargs(),
               # a stopped master must not hang a consumer: reconnect, ask the sentinels again
               "socket_timeout": 10.0, "socket_connect_timeout": 5.0,
               "retry_on_timeout": True}
    redbeat: dict[str, object] = {
        "sentinels": list(sentinel.sentinels), "service_name": sentinel.master, "db": db,
        "password": unquote(parts.password) if parts.password else None,
        "sentinel_kwargs": sentinel.sentinel_kwargs(), "socket_timeout": 10.0,
        "retry_period": 60}
    if parts.username:
        redbeat["username"] = unquote(parts.username)
    return {"broker_url": chain, "result_backend": chain,
            "broker_transport_options": options,
            "result_backend_transport_options": {"master_name": sentinel.master,
                                                 "sentinel_kwargs": sentinel.sentinel_kwargs()},
            "redbeat_redis_url": f"redis-sentinel://{prefix}{sentinel.sentinels[0][0]}:"
                                 f"{sentinel.sentinels[0][1]}/{db}",
            "redbeat_redis_options": redbeat}
