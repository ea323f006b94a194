"""Subscriptions to move events, their sealed secrets, and what became of each delivery.

Four kinds of keys (:mod:`mobility.keys`): the subscription's record (no secret in it); its
secret, sealed with the deployment's key (:class:`~mobility.store.credentials.Sealer`, the
subscription's id as associated data) under a key the API may write but only the orchestrator
may read (:mod:`mobility.store.acl`); per (subscription, move), a hash saying where each event
stands, whose ``HSETNX`` is what makes one delivery per (subscription, move, event) however
often the engine journals it (a retried phase, a takeover); and per event, its body, written
once for every subscription. The attempts of a subscription are a capped list, newest first.
"""

from __future__ import annotations

from typing import cast

from mobility import keys
from mobility.store.base import StoreBase, pack, unpack
from mobility.store.credentials import Sealer
from mobility.subscriptions import MAX_DELIVERIES_KEPT, Delivery, Subscription

QUEUED = "queued"
DELIVERED = "delivered"
GAVE_UP = "gave_up"
PROGRESS_TTL_S = 24 * 3600
NOTIFICATION_TTL_S = 24 * 3600
DELIVERIES_TTL_S = 30 * 24 * 3600


def _aad(sub_id: str) -> bytes:
    return f"subscription-secret:{sub_id}".encode()


class SubscriptionStore(StoreBase):

    # --- subscriptions (the API) ---

    def put_subscription(self, sub: Subscription, *, secret: str, sealer: Sealer) -> None:
        """Store a new subscription with its secret sealed; both land together."""
        blob = sealer.seal(secret.encode(), aad=_aad(sub.id))
        with self.r.pipeline(transaction=True) as p:
            p.set(keys.subscription(sub.id), pack(sub.to_dict()))
            p.set(keys.subscription_secret(sub.id), blob)
            p.sadd(keys.SUBSCRIPTIONS, sub.id)
            p.execute()

    def get_subscription(self, sub_id: str) -> Subscription | None:
        raw = cast(bytes | None, self.r.get(keys.subscription(sub_id)))
        return Subscription.from_dict(unpack(raw)) if raw else None

    def subscriptions(self) -> list[Subscription]:
        out = []
        for sub_id in self._names(keys.SUBSCRIPTIONS):
            sub = self.get_subscription(sub_id)
            if sub is not None:
                out.append(sub)
        return out

    def count_subscriptions(self) -> int:
        return int(self.r.scard(keys.SUBSCRIPTIONS))

    def delete_subscription(self, sub_id: str) -> bool:
        """Remove a subscription, its secret and its record of attempts. Deliveries already
        queued find it gone and stop."""
        with self.r.pipeline(transaction=True) as p:
            p.delete(keys.subscription(sub_id))
            p.delete(keys.subscription_secret(sub_id))
            p.delete(keys.subscription_deliveries(sub_id))
            p.srem(keys.SUBSCRIPTIONS, sub_id)
            deleted, *_ = p.execute()
        return bool(deleted)

    def deliveries(self, sub_id: str, *, limit: int = MAX_DELIVERIES_KEPT) -> list[Delivery]:
        raws = cast(list[bytes], self.r.lrange(keys.subscription_deliveries(sub_id), 0,
                                               limit - 1))
        return [Delivery.from_dict(unpack(raw)) for raw in raws]

    # --- deliveries (the orchestrator) ---

    def subscription_secret(self, sub_id: str, *, sealer: Sealer) -> str | None:
        """The secret that signs the subscription's deliveries; None once it is deleted."""
        blob = cast(bytes | None, self.r.get(keys.subscription_secret(sub_id)))
        return sealer.open(blob, aad=_aad(sub_id)).decode() if blob is not None else None

    def put_notification(self, event_id: str, body: dict[str, object]) -> None:
        """An event's body, written once (the first writer's stays: every subscription and
        every attempt send the same bytes)."""
        self.r.set(keys.notification(event_id), pack(body), nx=True, ex=NOTIFICATION_TTL_S)

    def get_notification(self, event_id: str) -> dict[str, object] | None:
        raw = cast(bytes | None, self.r.get(keys.notification(event_id)))
        return dict(unpack(raw)) if raw else None

    def queue_notification(self, sub_id: str, move_id: str, event: str) -> bool:
        """Note the event as queued for the subscription; False when it was already (then the
        caller sends nothing: one delivery per subscription, move and event)."""
        key = keys.subscription_progress(sub_id, move_id)
        with self.r.pipeline(transaction=True) as p:
            p.hsetnx(key, event, QUEUED)
            p.expire(key, PROGRESS_TTL_S)
            fresh, _ = p.execute()
        return bool(fresh)

    def progress(self, sub_id: str, move_id: str) -> dict[str, str]:
        """Where each event of the move stands for the subscription (and its attempts)."""
        raw = cast(dict[bytes, bytes], self.r.hgetall(keys.subscription_progress(sub_id,
                                                                                move_id)))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def next_attempt(self, sub_id: str, move_id: str, event: str) -> int:
        """Count one more attempt at the event; its number (from 1)."""
        return int(self.r.hincrby(keys.subscription_progress(sub_id, move_id),
                                  f"{event}#attempts", 1))

    def settle(self, sub_id: str, move_id: str, event: str, state: str) -> None:
        """The event is delivered or given up: it is no longer queued."""
        self.r.hset(keys.subscription_progress(sub_id, move_id), event, state)

    def record_delivery(self, sub_id: str, delivery: Delivery) -> None:
        """Record an attempt (the list keeps the newest :data:`MAX_DELIVERIES_KEPT`)."""
        key = keys.subscription_deliveries(sub_id)
        with self.r.pipeline(transaction=True) as p:
            p.lpush(key, pack(delivery.to_dict()))
            p.ltrim(key, 0, MAX_DELIVERIES_KEPT - 1)
            p.expire(key, DELIVERIES_TTL_S)
            p.execute()
