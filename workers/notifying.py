"""Move notifications: the engine's listener that queues them, and the task that delivers them.

:class:`Notifier` hears every event the engine journals (:meth:`Engine.on_event`); for the
few that are notifications (:func:`mobility.subscriptions.event_for`) it writes the event's
body once and queues one ``notify.deliver`` per subscription that wants it, guarded by
``HSETNX`` so a phase journaled twice (a retry, a takeover) is still notified once. The task's
arguments are two ids: the body and the secret stay in Redis (the secret sealed).

:func:`deliver` makes one attempt: it resolves the URL's host again and checks every address
(the whitelist of :mod:`mobility.subscriptions`), connects to a checked address (pinned: no
second lookup), sends ``Host`` as the URL names it, follows no redirect, reads at most
:data:`BODY_READ_CAP` bytes of the answer and gives the whole exchange at most two timeouts. A
2xx is delivered; anything else is tried again after 1, 2, 4... s, up to
``MOBILITY_SUBSCRIPTION_MAX_ATTEMPTS`` attempts; a URL that now reaches a refused address is
given up at once. Every attempt is recorded. A subscription gets a move's events in order: a
delivery waits (up to :data:`ORDER_WAIT_MAX_S`) while an earlier event of the same move is
still being tried for it.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import socket
import ssl
import threading
import time

from mobility import subscriptions as subs
from mobility.errors import MobilityError
from mobility.models import Event
from mobility.settings import Settings, get_settings
from mobility.store import Registry
from mobility.store.credentials import Sealer
from mobility.store.subscriptions import DELIVERED, GAVE_UP, QUEUED
from workers.app import app
from workers.routing import ORCHESTRATION

log = logging.getLogger(__name__)

DELIVER = "notify.deliver"
BODY_READ_CAP = 4096
ORDER_DEFER_S = 0.5
ORDER_WAIT_MAX_S = 120.0
TASK_EXPIRES_S = 600.0  # beyond a delivery's countdown
USER_AGENT = "service-mobility-notifier/1"


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    return Registry.from_url(get_settings().redis_url.get_secret_value())


@functools.lru_cache(maxsize=1)
def _sealer() -> Sealer:
    return Sealer.from_settings(get_settings())


def _send(sub_id: str, event_id: str, *, countdown: float = 0.0) -> None:
    deliver.apply_async((sub_id, event_id), queue=ORCHESTRATION, countdown=countdown,
                        expires=countdown + TASK_EXPIRES_S)


class Notifier:
    """The engine's listener: queues the deliveries an event makes (never raises for it: the
    engine logs what a listener raises, and the move goes on)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __call__(self, event: Event) -> None:
        kind = subs.event_for(event.kind, phase=event.phase, detail=event.detail)
        if kind is None:
            return
        wanted_by = self.registry.subscriptions()
        if not wanted_by:
            return
        move = self.registry.get_move(event.move_id)
        wanted_by = [s for s in wanted_by if s.wants(kind, move.service)]
        if not wanted_by:
            return
        eid = subs.event_id(move.id, kind)
        self.registry.put_notification(eid, subs.payload(move=move, event=kind, ts=event.ts))
        for sub in wanted_by:
            if self.registry.queue_notification(sub.id, move.id, kind):
                _send(sub.id, eid)
                log.info("move %s: %s queued for subscription %s", move.id, kind, sub.id)


# --- one attempt ---


def _connect(addresses: tuple[str, ...], port: int, timeout: float) -> socket.socket:
    """A connection to the first checked address that answers."""
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout)
        except OSError as exc:
            last = exc
    raise last or OSError("no address to connect to")


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to the checked addresses only (``host`` stays the URL's, for ``Host``)."""

    def __init__(self, target: subs.Target, *, timeout: float) -> None:
        super().__init__(target.endpoint.host, target.endpoint.port, timeout=timeout)
        self._addresses = target.addresses

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self.port, float(self.timeout or 1.0))


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to the checked addresses, the certificate checked against the URL's host."""

    def __init__(self, target: subs.Target, *, timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls or ssl.create_default_context()
        super().__init__(target.endpoint.host, target.endpoint.port, timeout=timeout,
                         context=self._tls)
        self._addresses = target.addresses

    def connect(self) -> None:
        sock = _connect(self._addresses, self.port, float(self.timeout or 1.0))
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def post(target: subs.Target, body: bytes, headers: dict[str, str], *, timeout: float,
         tls: ssl.SSLContext | None = None) -> int:
    """POST ``body`` to the target; the answer's status. Raises OSError or HTTPException.

    HTTPS checks the certificate against the URL's host (``tls``: the system's trust store
    unless another context is given).

    No redirect is followed (http.client follows none), at most :data:`BODY_READ_CAP` bytes
    of the answer are read, and the whole exchange is cut off after two timeouts (a server
    trickling bytes would otherwise hold the worker's thread for as long as it likes)."""
    conn: http.client.HTTPConnection
    if target.endpoint.scheme == "https":
        conn = _PinnedHTTPS(target, timeout=timeout, tls=tls)
    else:
        conn = _PinnedHTTP(target, timeout=timeout)

    cut_off = threading.Event()

    def cut() -> None:
        cut_off.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(2 * timeout, cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", target.endpoint.target, body=body,
                     headers={"Host": target.endpoint.host_header, **headers})
        response = conn.getresponse()
        response.read(BODY_READ_CAP)
    finally:
        watchdog.cancel()
        conn.close()
    if cut_off.is_set():  # what was read after the cut is no answer
        raise TimeoutError(f"no whole answer within {2 * timeout:g} s")
    return int(response.status)


def attempt(registry: Registry, settings: Settings, sub_id: str, event_id: str, *,
            sealer: Sealer) -> str:
    """One attempt at one delivery (or a wait for an earlier event); what came of it."""
    sub = registry.get_subscription(sub_id)
    body_data = registry.get_notification(event_id)
    if sub is None or body_data is None:
        return "gone"  # deleted since, or the event's body has expired
    event, move_id = str(body_data["event"]), str(body_data["move_id"])
    progress = registry.progress(sub_id, move_id)
    if progress.get(event) != QUEUED:
        return f"already {progress.get(event)}"  # a duplicate message
    earlier = [e for e in subs.EVENTS[:subs.SEQUENCE[event]] if progress.get(e) == QUEUED]
    if earlier and time.time() - float(str(body_data["timestamp"])) < ORDER_WAIT_MAX_S:
        _send(sub_id, event_id, countdown=ORDER_DEFER_S)
        return "waiting"
    secret = registry.subscription_secret(sub_id, sealer=sealer)
    if secret is None:
        return "gone"
    number = registry.next_attempt(sub_id, move_id, event)
    body = subs.encode(body_data)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        subs.EVENT_HEADER: event,
        subs.EVENT_ID_HEADER: event_id,
        subs.TIMESTAMP_HEADER: f"{time.time():.3f}",
        subs.ATTEMPT_HEADER: str(number),
        subs.SIGNATURE_HEADER: subs.sign(body, secret),
    }
    del secret
    status: int | None = None
    error: str | None = None
    final = False
    try:
        allow = subs.AllowList.parse(settings.subscription_allow_hosts)
        target = subs.check_and_resolve(sub.url, allow=allow)
        status = post(target, body, headers, timeout=settings.subscription_timeout_s)
        if not 200 <= status < 300:
            error = f"answered HTTP {status}"
    except subs.UrlUnresolvable as exc:
        error = str(exc)
    except MobilityError as exc:  # refused now (its DNS changed), or a bad allow-list
        error, final = str(exc), True
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"
    now = time.time()
    if error is None:
        outcome, wait = DELIVERED, None
        registry.settle(sub_id, move_id, event, DELIVERED)
    elif final or number >= settings.subscription_max_attempts:
        outcome, wait = GAVE_UP, None
        registry.settle(sub_id, move_id, event, GAVE_UP)
    else:
        outcome, wait = "retrying", subs.backoff(number)
    registry.record_delivery(sub_id, subs.Delivery(
        ts=now, event=event, event_id=event_id, move_id=move_id, attempt=number,
        outcome=outcome, status=status, error=error, next_in_s=wait))
    if wait is not None:
        _send(sub_id, event_id, countdown=wait)
    log.info("subscription %s: %s of move %s, attempt %s: %s%s", sub_id, event, move_id,
             number, outcome, f" ({error})" if error else "")
    return outcome


@app.task(name=DELIVER)
def deliver(sub_id: str, event_id: str) -> str:
    """Deliver one event to one subscription (ids only: the body and the secret stay in
    Redis, the secret sealed)."""
    if not subs.valid_subscription_id(sub_id):
        return "invalid"
    return attempt(_registry(), get_settings(), sub_id, event_id, sealer=_sealer())
