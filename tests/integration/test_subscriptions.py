"""Move notifications end to end: subscriptions through the API, deliveries from the real
orchestration worker to a real HTTP receiver on loopback, during real moves on the lab.

Aspects: a move notifies ``move.started``, ``move.cutover`` and ``move.succeeded`` in that
order, each signed with the subscription's secret (HMAC-SHA256 of the raw body), carrying its
event id in a header and the move in the body, each recorded as delivered on attempt 1; a
subscription filtered to another service gets nothing; a move rolled back notifies started
then rolled_back, and no secret reaches the stack's logs; the sealed secret is readable by the
orchestrator's Redis user and not by the API's; a receiver that answers 500 twice gets the
event on attempt 3, the same signed bytes each time, and the three attempts are recorded with
their statuses and waits; a loopback address outside the admin's allowance is a 422 on the
lab's API. On an app with no allowance at all (a real Redis, no lab): loopback, link-local,
metadata and numeric-trick URLs are 422, so are unknown events; only an admin creates and
deletes, a viewer reads; the secret is shown once and never in a read. One attempt on a
real Redis: delivered (and a duplicate message then sends nothing), given up after the last
attempt, given up at once when the address is refused at delivery time, nothing for a
subscription deleted meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.exceptions import StarletteDeprecationWarning

from cli.stack import Stack
from mobility import keys, tokens
from mobility import subscriptions as subs
from mobility.settings import Settings
from mobility.store import Registry, acl
from mobility.tokens import Role
from tests.conftest import RedisServer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from api.app import create_app

ALL = ["move.started", "move.cutover", "move.succeeded", "move.rolled_back"]


class Receiver(ThreadingHTTPServer):
    """An application's endpoint: records every request; answers 500 to the first
    ``failures`` requests of each event id, then 200."""

    daemon_threads = True

    def __init__(self, *, failures: int = 0) -> None:
        self.failures = failures
        self.got: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def on(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [g for g in self.got if g["path"] == path]

    def wait(self, path: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(got := self.on(path)) < n:
            assert time.monotonic() < deadline, f"{path}: {len(got)} of {n} deliveries came"
            time.sleep(0.1)
        return got


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            event_id = self.headers.get(subs.EVENT_ID_HEADER, "")
            seen = sum(1 for g in self.server.got if g["headers"].get(subs.EVENT_ID_HEADER)
                       == event_id)
            self.server.got.append({"path": self.path, "headers": dict(self.headers),
                                    "raw": raw, "at": time.time()})
        self.send_response(500 if seen < self.server.failures else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def checked(got: dict[str, Any], secret: str) -> dict[str, Any]:
    """The body of a delivery whose signature and headers are right."""
    assert subs.verify(got["raw"], secret, got["headers"][subs.SIGNATURE_HEADER])
    body = dict(json.loads(got["raw"]))
    assert got["headers"][subs.EVENT_ID_HEADER] == body["event_id"]
    assert got["headers"][subs.EVENT_HEADER] == body["event"]
    assert got["headers"]["Content-Type"] == "application/json"
    assert float(got["headers"][subs.TIMESTAMP_HEADER]) > 0
    return body


def subscribe(api: httpx.Client, url: str, events: list[str], **kw: str) -> dict[str, Any]:
    r = api.post("/v1/subscriptions", json={"url": url, "events": events, **kw})
    assert r.status_code == 201, r.text
    return dict(r.json())


def move_and_wait(api: httpx.Client, service: str, to: str) -> dict[str, Any]:
    r = api.post("/v1/moves", json={"service": service, "to_cluster": to})
    assert r.status_code == 202, r.text
    move_id = r.json()["id"]
    deadline = time.monotonic() + 90
    while (move := api.get(f"/v1/moves/{move_id}").json())["status"] not in (
            "succeeded", "failed", "rolled_back"):
        assert time.monotonic() < deadline, f"move stuck: {move}"
        time.sleep(0.1)
    return dict(move)


@pytest.fixture(scope="module")
def echo(lab_stack: Stack) -> Iterator[str]:
    name = f"notified-{time.monotonic_ns() % 100000}"
    with lab_stack.api_client(timeout=60) as api:
        r = api.post("/v1/services", json={"name": name, "workload": "echo", "cluster": "core"})
        assert r.status_code == 201, r.text
        yield name
        assert api.delete(f"/v1/services/{name}").status_code == 204


def other_cluster(api: httpx.Client, service: str) -> str:
    here = api.get(f"/v1/services/{service}").json()["instance"]["cluster"]
    return "edge" if here == "core" else "core"


def test_a_move_notifies_started_cutover_succeeded_in_order(
        lab_stack: Stack, api: httpx.Client, echo: str, tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        sub = subscribe(api, f"{receiver.url}/hooks/a", ALL, service=echo)
        elsewhere = subscribe(api, f"{receiver.url}/hooks/b", ALL, service="someone-else")
        assert sub["events"] == ALL and sub["secret"].startswith("whsec_")
        move = move_and_wait(api, echo, other_cluster(api, echo))
        assert move["status"] == "succeeded", move
        got = receiver.wait("/hooks/a", 3)
        bodies = [checked(g, sub["secret"]) for g in got]
        assert [b["event"] for b in bodies] == ["move.started", "move.cutover",
                                                "move.succeeded"]
        assert [b["sequence"] for b in bodies] == [0, 1, 2]
        for b in bodies:
            assert (b["move_id"], b["service"], b["from_cluster"], b["to_cluster"]) == (
                move["id"], echo, move["from_cluster"], move["to_cluster"])
            assert b["event_id"] == f"{move['id']}.{b['event']}"
        assert bodies[0]["status"] == "running" and bodies[2]["status"] == "succeeded"
        assert set(bodies[2]["phase_ms"]) == {"admit", "place", "wire", "sync", "cutover",
                                              "release"}
        assert bodies[2]["total_ms"] > 0
        assert all(g["headers"]["Host"] == receiver.url.removeprefix("http://") for g in got)
        assert all(g["headers"][subs.ATTEMPT_HEADER] == "1" for g in got)
        # reported, never asserted: from the event to its receipt
        (tmp_path / "latency.json").write_text(json.dumps(
            {b["event"]: round((g["at"] - b["timestamp"]) * 1000, 1)
             for g, b in zip(got, bodies, strict=True)}))

        detail = api.get(f"/v1/subscriptions/{sub['id']}").json()
        assert "secret" not in detail
        recorded = detail["deliveries"]
        assert [(d["event"], d["attempt"], d["status"], d["outcome"]) for d in recorded] == [
            ("move.succeeded", 1, 200, "delivered"), ("move.cutover", 1, 200, "delivered"),
            ("move.started", 1, 200, "delivered")]
        time.sleep(1)  # nothing more comes: one delivery per (subscription, move, event)
        assert len(receiver.on("/hooks/a")) == 3 and receiver.on("/hooks/b") == []
        assert api.get(f"/v1/subscriptions/{elsewhere['id']}").json()["deliveries"] == []

        # the secret is sealed, readable by the orchestrator's Redis user only
        admin = redis.Redis.from_url(lab_stack.redis_url())
        as_api = redis.Redis.from_url(lab_stack.redis_url(user=acl.API))
        as_orch = redis.Redis.from_url(lab_stack.redis_url(user=acl.ORCHESTRATOR))
        try:
            blob = admin.get(keys.subscription_secret(sub["id"]))
            assert blob and sub["secret"].encode() not in blob
            assert sub["secret"].encode() not in (admin.get(keys.subscription(sub["id"])) or b"")
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_api.get(keys.subscription_secret(sub["id"]))
            assert as_orch.get(keys.subscription_secret(sub["id"])) == blob
        finally:
            for c in (admin, as_api, as_orch):
                c.close()
        for s in (sub, elsewhere):
            assert api.delete(f"/v1/subscriptions/{s['id']}").status_code == 204
        assert api.get(f"/v1/subscriptions/{sub['id']}").status_code == 404
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_a_rolled_back_move_notifies_started_then_rolled_back(
        lab_stack: Stack, api: httpx.Client, echo: str) -> None:
    receiver = Receiver()
    try:
        sub = subscribe(api, f"{receiver.url}/hooks/rb", ALL)
        r = api.post("/v1/moves", json={"service": echo, "to_cluster": other_cluster(api, echo),
                                        "faults": ["wire"]})
        assert r.status_code == 202, r.text
        got = receiver.wait("/hooks/rb", 2)
        bodies = [checked(g, sub["secret"]) for g in got]
        assert [b["event"] for b in bodies] == ["move.started", "move.rolled_back"]
        assert bodies[1]["status"] == "rolled_back" and "wire" in bodies[1]["error"]
        time.sleep(1)
        assert len(receiver.on("/hooks/rb")) == 2  # no cutover, no success
        assert api.delete(f"/v1/subscriptions/{sub['id']}").status_code == 204
        # no secret of any subscription reaches the logs (task arguments are ids only)
        logs = "".join(p.read_text(errors="replace") for p in lab_stack.logs.glob("*.log"))
        assert "notify.deliver" in logs and sub["id"] in logs
        assert sub["secret"] not in logs
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_a_failing_receiver_gets_the_event_on_the_third_attempt(
        api: httpx.Client, echo: str) -> None:
    receiver = Receiver(failures=2)
    try:
        sub = subscribe(api, f"{receiver.url}/hooks/retry", ["move.succeeded"])
        move = move_and_wait(api, echo, other_cluster(api, echo))
        assert move["status"] == "succeeded", move
        got = receiver.wait("/hooks/retry", 3)
        assert [g["headers"][subs.ATTEMPT_HEADER] for g in got] == ["1", "2", "3"]
        assert len({g["raw"] for g in got}) == 1  # the same bytes at every attempt
        assert all(checked(g, sub["secret"])["move_id"] == move["id"] for g in got)
        deadline = time.monotonic() + 10
        while len(recorded := api.get(f"/v1/subscriptions/{sub['id']}").json()[
                "deliveries"]) < 3:
            assert time.monotonic() < deadline, recorded
            time.sleep(0.1)
        assert [(d["attempt"], d["status"], d["outcome"], d["next_in_s"]) for d in recorded] == [
            (3, 200, "delivered", None), (2, 500, "retrying", 2.0), (1, 500, "retrying", 1.0)]
        assert recorded[1]["error"] == "answered HTTP 500"
        assert recorded[0]["ts"] > recorded[1]["ts"] > recorded[2]["ts"]
        time.sleep(1)
        assert len(receiver.on("/hooks/retry")) == 3
        assert api.delete(f"/v1/subscriptions/{sub['id']}").status_code == 204
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_loopback_outside_the_allowance_is_refused_on_the_lab(api: httpx.Client) -> None:
    for url in ("http://127.0.0.2:9/", "http://[::1]:9/", "http://[::ffff:127.0.0.3]:9/"):
        r = api.post("/v1/subscriptions", json={"url": url, "events": ["move.started"]})
        assert r.status_code == 422, (url, r.text)
        assert "loopback" in r.json()["detail"]


# --- an app with no allowance (a real Redis, no lab) ---


@pytest.fixture
def plain(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[TestClient, Registry]]:
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    reg = Registry.from_url(url)
    reg.r.flushdb()
    settings = Settings(redis_url=url,  # type: ignore[arg-type]
                        image_dir=str(tmp_path / "images"))
    assert settings.subscription_allow_hosts == ()
    yield TestClient(create_app(settings), raise_server_exceptions=False), reg
    reg.r.flushdb()
    reg.r.close()


def bearer(reg: Registry, role: Role) -> dict[str, str]:
    record, secret = tokens.mint(role=role, name=f"test {role}")
    reg.put_token(record)
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/", "http://[::1]/",
    "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest/meta-data/",
    "http://2130706433/", "http://0x7f.1/", "http://10.0.0.1/", "http://198.18.0.1/",
    "file:///etc/passwd", "http://user:pw@93.184.216.34/", "http://93.184.216.34:0/",
])
def test_refused_urls_are_422_without_an_allowance(plain: tuple[TestClient, Registry],
                                                   url: str) -> None:
    client, reg = plain
    r = client.post("/v1/subscriptions", headers=bearer(reg, Role.ADMIN),
                    json={"url": url, "events": ["move.started"]})
    assert r.status_code == 422, r.text
    assert reg.r.scard(keys.SUBSCRIPTIONS) == 0


def test_roles_events_and_the_secret_shown_once(plain: tuple[TestClient, Registry]) -> None:
    client, reg = plain
    admin, viewer = bearer(reg, Role.ADMIN), bearer(reg, Role.VIEWER)
    operator = bearer(reg, Role.OPERATOR)
    body = {"url": "https://93.184.216.34/hooks?k=v", "events": ["move.succeeded",
                                                                 "move.started"]}
    for who in (viewer, operator):
        assert client.post("/v1/subscriptions", headers=who, json=body).status_code == 403
    for bad in ({**body, "events": []}, {**body, "events": ["move.exploded"]},
                {**body, "extra": 1}, {**body, "service": "Bad Name"}):
        assert client.post("/v1/subscriptions", headers=admin, json=bad).status_code == 422
    r = client.post("/v1/subscriptions", headers=admin, json=body)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["events"] == ["move.started", "move.succeeded"]  # in a move's order
    assert subs.valid_subscription_id(made["id"]) and made["secret"]
    listed = client.get("/v1/subscriptions", headers=viewer)
    assert listed.status_code == 200 and [s["id"] for s in listed.json()] == [made["id"]]
    detail = client.get(f"/v1/subscriptions/{made['id']}", headers=viewer).json()
    assert detail["deliveries"] == [] and detail["url"] == body["url"]
    assert made["secret"] not in listed.text + json.dumps(detail)
    assert client.get("/v1/subscriptions/sub-0000000000000000",
                      headers=viewer).status_code == 404
    assert client.get("/v1/subscriptions/..%2Ftokens", headers=viewer).status_code in (404,
                                                                                       422)
    assert client.delete(f"/v1/subscriptions/{made['id']}", headers=viewer).status_code == 403
    assert client.delete(f"/v1/subscriptions/{made['id']}", headers=admin).status_code == 204
    assert client.delete(f"/v1/subscriptions/{made['id']}", headers=admin).status_code == 404
    assert reg.r.exists(keys.subscription_secret(made["id"])) == 0


# --- one attempt, on a real Redis, without Celery (no retry is sent in these cases) ---


def stored(reg: Registry, url: str, *, secret: str = "whsec_test") -> tuple[str, str]:
    """A subscription to move.succeeded and one queued event for it: (its id, the event's)."""
    from mobility.store.credentials import Sealer

    sub = subs.Subscription(id=subs.new_subscription_id(), url=url,
                            events=(subs.SUCCEEDED,), created_at=time.time())
    reg.put_subscription(sub, secret=secret, sealer=Sealer(b"k" * 32))
    eid = subs.event_id("mv-20261202000000-abcdef", subs.SUCCEEDED)
    reg.put_notification(eid, {"event_id": eid, "event": subs.SUCCEEDED, "sequence": 2,
                               "timestamp": time.time(),
                               "move_id": "mv-20261202000000-abcdef"})
    assert reg.queue_notification(sub.id, "mv-20261202000000-abcdef", subs.SUCCEEDED)
    assert not reg.queue_notification(sub.id, "mv-20261202000000-abcdef", subs.SUCCEEDED)
    return sub.id, eid


def test_one_attempt_delivers_gives_up_or_refuses(plain: tuple[TestClient, Registry]) -> None:
    from mobility.store.credentials import Sealer
    from workers.notifying import attempt

    _, reg = plain
    sealer = Sealer(b"k" * 32)
    ok, failing = Receiver(), Receiver(failures=5)
    allowed = Settings(subscription_allow_hosts=("127.0.0.1/32",),
                       subscription_max_attempts=1)
    try:
        sub_id, eid = stored(reg, f"{ok.url}/a", secret="whsec_one")
        assert attempt(reg, allowed, sub_id, eid, sealer=sealer) == "delivered"
        [got] = ok.on("/a")
        assert checked(got, "whsec_one")["event_id"] == eid
        # a duplicate message of a delivered event sends nothing
        assert attempt(reg, allowed, sub_id, eid, sealer=sealer) == "already delivered"
        assert len(ok.on("/a")) == 1

        # the last attempt failing: given up, recorded
        sub_id, eid = stored(reg, f"{failing.url}/b")
        assert attempt(reg, allowed, sub_id, eid, sealer=sealer) == "gave_up"
        [d] = reg.deliveries(sub_id)
        assert (d.attempt, d.status, d.outcome, d.error) == (1, 500, "gave_up",
                                                             "answered HTTP 500")

        # an address allowed when subscribed, refused now (as after a DNS change): given up
        # at once, nothing sent
        sub_id, eid = stored(reg, f"{ok.url}/c")
        no_allowance = Settings()
        assert attempt(reg, no_allowance, sub_id, eid, sealer=sealer) == "gave_up"
        [d] = reg.deliveries(sub_id)
        assert d.status is None and "loopback" in (d.error or "") and ok.on("/c") == []

        # a subscription deleted before its delivery ran
        sub_id, eid = stored(reg, f"{ok.url}/d")
        assert reg.delete_subscription(sub_id)
        assert attempt(reg, allowed, sub_id, eid, sealer=sealer) == "gone"
        assert ok.on("/d") == []
    finally:
        for r in (ok, failing):
            r.shutdown()
            r.server_close()
