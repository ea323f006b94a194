"""/v1/subscriptions: applications' subscriptions to move events (ETSI MEC's AMS notifications).

Making and deleting one needs ``admin`` (a subscription makes the orchestrator call out to a
URL); reading them needs ``viewer``. The URL passes the whitelist of
:mod:`mobility.subscriptions` (checked again at each delivery) or the answer is a 422 saying
which rule it broke. The signing secret is in the creation's answer only; it is stored sealed
and the API cannot read it back.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RegistryDep, SettingsDep
from api.schemas import Name, answers
from mobility import subscriptions as subs
from mobility.errors import Conflict, NotFound
from mobility.store.credentials import Sealer

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])

EventType = Literal["move.started", "move.cutover", "move.succeeded", "move.rolled_back",
                    "move.failed"]
SubscriptionId = Annotated[str, Path(pattern=subs.SUBSCRIPTION_ID,
                                     examples=["sub-0123456789abcdef"])]


class SubscriptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=subs.MAX_URL_CHARS,
                              pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$",
                              examples=["https://app.example.com/mobility-events"])]
    events: Annotated[list[EventType], Field(min_length=1, max_length=len(subs.EVENTS))]
    service: Name | None = Field(default=None, description="only this service's moves")


class DeliveryOut(BaseModel):
    ts: float
    event: str
    event_id: str
    move_id: str
    attempt: int
    outcome: Literal["delivered", "retrying", "gave_up"]
    status: int | None = Field(description="the receiver's HTTP status, if it answered")
    error: str | None
    next_in_s: float | None = Field(description="when retrying: the wait before the next")

    @classmethod
    def of(cls, d: subs.Delivery) -> DeliveryOut:
        return cls(ts=d.ts, event=d.event, event_id=d.event_id, move_id=d.move_id,
                   attempt=d.attempt, outcome=d.outcome,  # type: ignore[arg-type]
                   status=d.status, error=d.error, next_in_s=d.next_in_s)


class SubscriptionOut(BaseModel):
    id: str
    url: str
    events: list[str]
    service: str | None
    created_at: float
    links: dict[str, str]

    @classmethod
    def of(cls, s: subs.Subscription) -> SubscriptionOut:
        return cls(id=s.id, url=s.url, events=list(s.events), service=s.service,
                   created_at=s.created_at, links={"self": f"/v1/subscriptions/{s.id}"})


class SubscriptionDetail(SubscriptionOut):
    deliveries: list[DeliveryOut] = Field(description="recent attempts, newest first")


class NewSubscription(SubscriptionOut):
    secret: str = Field(description="signs every delivery (X-Mobility-Signature: "
                                    "sha256=<hex HMAC-SHA256 of the body>); shown this once")


@router.post("", status_code=201, responses=answers(409, 422))
def create_subscription(body: SubscriptionRequest, request: Request, registry: RegistryDep,
                        settings: SettingsDep) -> NewSubscription:
    """Subscribe a URL to move events (201, with the secret, once); 422 a URL the whitelist
    refuses or whose host does not resolve; 409 too many subscriptions."""
    allow = subs.AllowList.parse(settings.subscription_allow_hosts)
    subs.check_and_resolve(body.url, allow=allow)  # UrlRefused / UrlUnresolvable: 422
    if registry.count_subscriptions() >= subs.MAX_SUBSCRIPTIONS:
        raise Conflict(f"there are {subs.MAX_SUBSCRIPTIONS} subscriptions already; delete "
                       "one first")
    sealer = Sealer.from_settings(settings)  # 409 when no key is set in production
    events = tuple(e for e in subs.EVENTS if e in body.events)  # in order, each once
    token = getattr(request.state, "token", None)
    sub = subs.Subscription(id=subs.new_subscription_id(), url=body.url, events=events,
                            created_at=time.time(), service=body.service,
                            created_by=str(getattr(token, "id", "")))
    secret = subs.new_secret()
    registry.put_subscription(sub, secret=secret, sealer=sealer)
    return NewSubscription(**SubscriptionOut.of(sub).model_dump(), secret=secret)


@router.get("")
def list_subscriptions(registry: RegistryDep) -> list[SubscriptionOut]:
    return [SubscriptionOut.of(s) for s in registry.subscriptions()]


@router.get("/{sub_id}", responses=answers(404))
def get_subscription(sub_id: SubscriptionId, registry: RegistryDep) -> SubscriptionDetail:
    """The subscription and its recent delivery attempts (time, event, attempt, HTTP status
    or error)."""
    sub = registry.get_subscription(sub_id)
    if sub is None:
        raise NotFound(f"subscription {sub_id!r} does not exist")
    return SubscriptionDetail(**SubscriptionOut.of(sub).model_dump(),
                              deliveries=[DeliveryOut.of(d)
                                          for d in registry.deliveries(sub_id)])


@router.delete("/{sub_id}", status_code=204, responses=answers(404))
def delete_subscription(sub_id: SubscriptionId, registry: RegistryDep) -> Response:
    if not registry.delete_subscription(sub_id):
        raise NotFound(f"subscription {sub_id!r} does not exist")
    return Response(status_code=204)
