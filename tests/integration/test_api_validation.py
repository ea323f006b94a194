"""Request validation of the HTTP API, with a real Redis holding the caller's token.

Every route needs a token, so the app runs against a real Redis with an operator token (and an
admin one) in it; the few records some tests need (two clusters, a service, a finished move
with its events) are stored there too, in a database of this module's own.

Aspects: POST /v1/moves with malformed JSON, a non-object body, missing or extra fields, bad
names (uppercase, too long, bad first character), bad ``faults`` -> 422 with a ``detail``;
``faults`` while fault injection is off -> 422 naming MOBILITY_FAULT_INJECTION; unknown phases
in ``faults`` with fault injection on -> 422 naming them; POST /v1/services with bad bodies ->
422; GET /v1/moves with a bad ``limit`` -> 422; bad input never gives a 500, not even when it
holds NaN.

Step 7's findings, each refused before it can reach a key or a stream: a move id outside its
form (``<id>:events`` named the move's event stream: a 500 WRONGTYPE) -> 422 on every move
route; a ``Last-Event-ID`` that is not a stream id (it crashed the stream after its 200) ->
422 before the stream, while a good one resumes it; a signal's region (or cluster, service)
outside the key alphabet (``|`` poisoned the series keys) -> 422, and a good one is stored;
``every_s`` under 1 s (1e-300 was stored as 0) -> 422, 1 s is taken; a cron celery cannot
parse -> 422 (it was a 500); a policy's bad field -> 422 naming the field and the value, and a
policy read back is taken back as it is. Bodies over the cap -> 413 (announced or streamed,
with or without a token, never read whole), a bad Content-Length -> 400, at the cap -> read.
The error bodies match the OpenAPI's declared ones (ErrorOut; ValidationErrorOut for a 422,
both its forms).
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette warns when its test client runs on httpx instead of httpx2; the venv has
    # httpx (a project dependency), and this warning is about the test tooling, not the code.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from api.app import create_app
from mobility import keys, tokens
from mobility.models import Cluster, Event, Instance, Move, MoveStatus, Node, Service
from mobility.settings import Settings
from mobility.store import Registry, new_move_id
from tests.conftest import RedisServer
from tests.integration.celery_binding import celery_bound_to

GOOD_MOVE = {"service": "web", "to_cluster": "edge"}
GOOD_SERVICE = {"name": "web", "workload": "echo", "cluster": "core"}


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    reg = Registry.from_url(url)
    reg.r.flushdb()
    yield url
    reg.r.flushdb()
    reg.r.close()


@pytest.fixture(scope="module")
def token(redis_url: str) -> str:
    reg = Registry.from_url(redis_url)
    record, secret = tokens.mint(role=tokens.Role.OPERATOR, name="validation tests")
    reg.put_token(record)
    reg.r.close()
    return secret


def client(redis_url: str, token: str, *, fault_injection: bool = False) -> TestClient:
    app = create_app(Settings(redis_url=redis_url, fault_injection=fault_injection))
    return TestClient(app, raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def api(redis_url: str, token: str) -> TestClient:
    return client(redis_url, token)


@pytest.fixture
def api_fi(redis_url: str, token: str) -> TestClient:
    return client(redis_url, token, fault_injection=True)


def detail_of(response: Any) -> Any:
    assert response.status_code == 422, (response.status_code, response.text)
    body = response.json()
    assert body.get("detail"), body
    return body["detail"]


def post_raw(api: TestClient, path: str, raw: bytes, ctype: str = "application/json") -> Any:
    return api.post(path, content=raw, headers={"content-type": ctype})


# --- POST /v1/moves ---


@pytest.mark.parametrize(
    "raw", [b"{bad", b"", b'{"service": "web",}', b"null", b"[]", b'"web"', b"42"]
)
def test_move_malformed_or_non_object_body(api: TestClient, raw: bytes) -> None:
    detail_of(post_raw(api, "/v1/moves", raw))


def test_move_form_body(api: TestClient) -> None:
    detail_of(
        post_raw(
            api, "/v1/moves", b"service=web&to_cluster=edge", "application/x-www-form-urlencoded"
        )
    )


@pytest.mark.parametrize("missing", ["service", "to_cluster"])
def test_move_missing_field(api: TestClient, missing: str) -> None:
    body = {k: v for k, v in GOOD_MOVE.items() if k != missing}
    detail = detail_of(api.post("/v1/moves", json=body))
    assert any(e["type"] == "missing" and e["loc"][-1] == missing for e in detail)


def test_move_extra_field(api: TestClient) -> None:
    detail = detail_of(api.post("/v1/moves", json={**GOOD_MOVE, "force": True}))
    assert any(e["loc"][-1] == "force" for e in detail)


@pytest.mark.parametrize("field", ["service", "to_cluster"])
@pytest.mark.parametrize(
    "value", ["Web", "EDGE", "a" * 64, "1web", "-web", "", "web_1", "web.1", 7, None, ["web"]]
)
def test_move_bad_name(api: TestClient, field: str, value: object) -> None:
    detail = detail_of(api.post("/v1/moves", json={**GOOD_MOVE, field: value}))
    assert any(e["loc"][-1] == field for e in detail)


def test_longest_name_is_only_refused_for_faults(api: TestClient) -> None:
    # 63 characters pass the schema; the request then stops at the fault-injection check.
    body = {"service": "a" * 63, "to_cluster": "edge", "faults": ["wire"]}
    assert "MOBILITY_FAULT_INJECTION" in detail_of(api.post("/v1/moves", json=body))


@pytest.mark.parametrize("faults", ["wire", ["wire"] * 7, [1], {"wire": True}])
def test_move_bad_faults_shape(api_fi: TestClient, faults: object) -> None:
    detail = detail_of(api_fi.post("/v1/moves", json={**GOOD_MOVE, "faults": faults}))
    assert any("faults" in e["loc"] for e in detail)


def test_faults_refused_when_fault_injection_is_off(api: TestClient) -> None:
    detail = detail_of(api.post("/v1/moves", json={**GOOD_MOVE, "faults": ["wire"]}))
    assert isinstance(detail, str)
    assert "MOBILITY_FAULT_INJECTION" in detail


def test_unknown_fault_phase_is_named(api_fi: TestClient) -> None:
    detail = detail_of(api_fi.post("/v1/moves", json={**GOOD_MOVE, "faults": ["bogus"]}))
    assert isinstance(detail, str)
    assert "'bogus'" in detail
    assert "MOBILITY_FAULT_INJECTION" not in detail


def test_only_unknown_fault_phases_are_reported(api_fi: TestClient) -> None:
    body = {**GOOD_MOVE, "faults": ["wire", "bogus", "teleport"]}
    detail = detail_of(api_fi.post("/v1/moves", json=body))
    unknown_part = detail.split(";")[0]
    assert "'bogus'" in unknown_part and "'teleport'" in unknown_part
    assert "'wire'" not in unknown_part
    assert "'wire'" in detail  # listed among the known phases


@pytest.mark.parametrize(
    "raw",
    [
        b'{"service": NaN, "to_cluster": "edge"}',
        b'{"service": "web", "to_cluster": "edge", "faults": ["wire", Infinity]}',
    ],
)
def test_nan_in_a_bad_field_is_a_422_not_a_500(api: TestClient, raw: bytes) -> None:
    detail_of(post_raw(api, "/v1/moves", raw))


# --- POST /v1/services ---


@pytest.mark.parametrize("raw", [b"{bad", b"", b"[]", b"null"])
def test_service_malformed_body(api: TestClient, raw: bytes) -> None:
    detail_of(post_raw(api, "/v1/services", raw))


@pytest.mark.parametrize("missing", ["name", "cluster"])
def test_service_missing_field(api: TestClient, missing: str) -> None:
    body = {k: v for k, v in GOOD_SERVICE.items() if k != missing}
    detail = detail_of(api.post("/v1/services", json=body))
    assert any(e["type"] == "missing" and e["loc"][-1] == missing for e in detail)


def test_service_names_a_workload_or_an_image(api: TestClient) -> None:
    body = {k: v for k, v in GOOD_SERVICE.items() if k != "workload"}
    r = api.post("/v1/services", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("workload/image:")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "Web"),
        ("name", "a" * 24),
        ("name", ""),
        ("name", "1web"),
        ("name", "web_1"),
        ("workload", ""),
        ("workload", "w" * 33),
        ("workload", 3),
        ("cluster", "CORE"),
        ("cluster", "a" * 64),
        ("params", {"port": "x"}),
        ("params", [7000]),
        ("params", {"port": None}),
        ("params", {f"p{i}": 1 for i in range(17)}),
        ("peers", ["Bad"]),
        ("peers", "db"),
        ("peers", [f"p{i}" for i in range(17)]),
        ("command", "rm -rf /"),
    ],
)
def test_service_bad_field(api: TestClient, field: str, value: object) -> None:
    detail = detail_of(api.post("/v1/services", json={**GOOD_SERVICE, field: value}))
    assert any(field in e["loc"] for e in detail)


# --- GET /v1/moves ---


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "many"])
def test_list_moves_bad_limit(api: TestClient, limit: str) -> None:
    detail = detail_of(api.get("/v1/moves", params={"limit": limit}))
    assert any(e["loc"] == ["query", "limit"] for e in detail)


def test_validation_details_are_json_objects(api: TestClient) -> None:
    r = api.post("/v1/moves", json={"service": "Web"})
    assert r.headers["content-type"].startswith("application/json")
    detail = json.loads(r.text)["detail"]
    assert all({"loc", "msg", "type"} <= set(e) for e in detail)


# --- step 7: what becomes a key or a stream id is held to its form ---


@pytest.fixture(scope="module")
def admin(redis_url: str) -> str:
    reg = Registry.from_url(redis_url)
    record, secret = tokens.mint(role=tokens.Role.ADMIN, name="validation tests admin")
    reg.put_token(record)
    reg.r.close()
    return secret


@pytest.fixture(scope="module")
def ended_move(redis_url: str) -> str:
    """Clusters core and edge, a service in core, and a move of it that has ended, with its
    event stream (``mob:move:<id>:events``)."""
    reg = Registry.from_url(redis_url)
    for name in ("core", "edge"):
        reg.put_cluster(Cluster(name=name, nodes=(Node(name="n0", cluster=name,
                                                       underlay_ip="198.51.100.1"),)))
    reg.put_service(Service(name="web", workload="echo",
                            instance=Instance(cluster="core", node="n0", pod="p-web")))
    move = Move(id=new_move_id(), service="web", from_cluster="core", to_cluster="edge",
                created_at=time.time())
    reg.create_move(move)
    for detail in ("pending", "rolling_back"):
        reg.add_event(Event(move_id=move.id, kind="status", ts=time.time(), detail=detail),
                      ttl_s=600)
    reg.update_move(move.id, lambda m: setattr(m, "status", MoveStatus.ROLLING_BACK))
    reg.finish_move(move.id, MoveStatus.ROLLED_BACK)
    reg.r.close()
    return move.id


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("POST", "/abort"),
                                                ("GET", "/events")])
def test_a_move_id_outside_its_form_names_no_key(api: TestClient, ended_move: str,
                                                 method: str, suffix: str) -> None:
    # "<id>:events" is the move's event stream: read as a move record it was a WRONGTYPE 500
    for bad in (f"{ended_move}:events", "mv-1", "*", f"{ended_move}x"):
        detail = detail_of(api.request(method, f"/v1/moves/{bad}{suffix}"))
        assert any(e["loc"] == ["path", "move_id"] for e in detail), detail
    r = api.request(method, f"/v1/moves/{ended_move}{suffix}")
    assert r.status_code in (200, 409), r.text  # 409: abort of a move that has ended


def read_stream(api: TestClient, move_id: str, last_event_id: str | None) -> list[str]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with api.stream("GET", f"/v1/moves/{move_id}/events", headers=headers) as r:
        assert r.status_code == 200, r.read()
        return [line for line in r.iter_lines() if line.startswith(("id:", "event:"))]


@pytest.mark.parametrize("bad", ["garbage", "1-", "-1", "1-2-3", "1.5-0", "", " 1-0",
                                 "99999999999999999999-0", "1-18446744073709551616"])
def test_a_bad_last_event_id_is_a_422_before_the_stream(api: TestClient, ended_move: str,
                                                        bad: str) -> None:
    r = api.get(f"/v1/moves/{ended_move}/events", headers={"Last-Event-ID": bad})
    detail = detail_of(r)
    assert any(e["loc"] == ["header", "last-event-id"] for e in detail), detail
    assert r.headers["content-type"].startswith("application/json")


def test_a_good_last_event_id_resumes_the_stream(api: TestClient, ended_move: str) -> None:
    everything = read_stream(api, ended_move, None)
    ids = [line.removeprefix("id: ") for line in everything if line.startswith("id:")]
    assert len(ids) == 2 and everything[-1] == "event: end", everything
    assert read_stream(api, ended_move, ids[0]) == everything[2:]  # after the first event
    assert read_stream(api, ended_move, "0-0") == everything


@pytest.mark.parametrize(("field", "value"), [
    ("region", "eu|west"), ("region", "EU"), ("region", "eu:west"), ("region", "eu west"),
    ("region", "r" * 64), ("region", ""), ("region", "-eu"), ("cluster", "core|x"),
    ("service", "web|x"), ("service", "web:x"),
])
def test_a_key_part_outside_the_alphabet_is_refused(api: TestClient, ended_move: str,
                                                    field: str, value: str) -> None:
    sample = {"series": "latency_ms", "cluster": "core", "service": "web", "value": 1.0,
              field: value}
    detail = detail_of(api.post("/v1/signals", json={"samples": [sample]}))
    assert any(e["loc"][-1] == field for e in detail), detail


def test_a_key_part_inside_the_alphabet_is_stored(api: TestClient, ended_move: str) -> None:
    sample = {"series": "latency_ms", "cluster": "core", "service": "web",
              "region": "eu-west-1.a_b", "value": 1.0}
    r = api.post("/v1/signals", json={"samples": [sample]})
    assert r.status_code == 202 and r.json() == {"stored": 1}, r.text


def admin_client(redis_url: str, admin: str) -> TestClient:
    return TestClient(create_app(Settings(redis_url=redis_url)), raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {admin}"})


@pytest.mark.parametrize("body", [
    {"every_s": 1e-300}, {"every_s": 0.5}, {"every_s": 0}, {"every_s": -1},
    {"every_s": 7 * 24 * 3600 + 1}, {"every_s": True}, {"every_s": "60"},
    {"cron": "- 4 ws5t ws5t b"}, {"cron": "61 * * * *"}, {"cron": "* * *"}, {},
    {"cron": "* * * * *", "every_s": 60},
])
def test_a_schedule_celery_cannot_run_is_a_422(redis_url: str, admin: str,
                                               body: dict[str, Any]) -> None:
    detail_of(admin_client(redis_url, admin).put("/v1/rebalance/schedule", json=body))


@pytest.mark.filterwarnings(
    "ignore:RedBeat will stop falling back to broker_transport_options:DeprecationWarning")
def test_a_one_second_schedule_is_taken(redis_url: str, admin: str) -> None:
    with celery_bound_to(redis_url):
        api = admin_client(redis_url, admin)
        r = api.put("/v1/rebalance/schedule", json={"every_s": 1})
        assert r.status_code == 200, r.text
        assert r.json()["every_s"] == 1
        stored = Registry.from_url(redis_url).r.hget(f"{keys.REDBEAT_PREFIX}rebalance",
                                                     "definition")
        assert stored is not None and json.loads(stored)["schedule"]["every"] == 1.0
        assert api.delete("/v1/rebalance/schedule").status_code == 204


POLICY = {
    "id": "val", "services": ["web"],
    "condition": {"series": "latency_ms", "aggregate": "p95", "comparator": ">",
                  "threshold": 20, "duration_s": 5, "region": "eu"},
    "target": {"labels": {"tier": "edge"}, "nearest_by": "capacity"},
}


@pytest.mark.parametrize(("change", "words"), [
    ({"condition": {**POLICY["condition"], "aggregate": "p42"}}, ["condition.aggregate", "p42"]),
    ({"condition": {**POLICY["condition"], "region": "eu|x"}}, ["condition.region", "eu|x"]),
    ({"id": "a:b"}, ["id", "a:b"]),
    ({"target": {"nearest_by": "signal"}}, ["target.signal.series", "required"]),
    ({"target": {"nearest_by": "distance"}}, ["target.distance.distances"]),
    ({"condition": {**POLICY["condition"], "threshold": 1e300}}, ["condition.threshold"]),
    ({"enabled": "yes"}, ["enabled", "yes"]),
    ({"hysterisis": 1}, ["hysterisis"]),
])
def test_a_bad_policy_is_a_sentence_naming_field_and_value(
        redis_url: str, admin: str, change: dict[str, Any], words: list[str]) -> None:
    r = admin_client(redis_url, admin).post("/v1/policies", json={**POLICY, **change})
    detail = detail_of(r)
    assert isinstance(detail, str), detail
    assert all(w in detail for w in words), detail


def test_a_policy_read_back_is_taken_back(redis_url: str, admin: str) -> None:
    api = admin_client(redis_url, admin)
    for target in ({"labels": {"tier": "edge"}},
                   {"nearest_by": "signal", "series": "rtt_ms"},
                   {"nearest_by": "distance", "distances": {"edge": 1, "core": 5}}):
        body = {**POLICY, "id": f"rt-{target.get('nearest_by', 'capacity')}", "target": target}
        r = api.post("/v1/policies", json=body)
        assert r.status_code == 201, r.text
        stored = api.get(f"/v1/policies/{body['id']}").json()
        assert stored == r.json()
        again = api.put(f"/v1/policies/{body['id']}", json=stored)  # nulls, {} and all
        assert again.status_code == 200 and again.json() == stored, again.text
        other = api.put(f"/v1/policies/{body['id']}", json={**stored, "id": "other"})
        assert "not the path's" in detail_of(other)
        assert api.delete(f"/v1/policies/{body['id']}").status_code == 204


# --- step 7: the body cap ---


def capped(redis_url: str, token: str, max_bytes: int) -> TestClient:
    app = create_app(Settings(redis_url=redis_url, api_max_body_bytes=max_bytes))
    return TestClient(app, raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {token}"})


def signals_of(size: int) -> bytes:
    """A signal batch of exactly ``size`` bytes (JSON, padded with spaces)."""
    raw = b'{"samples": [{"series": "latency_ms", "cluster": "nowhere", "value": 1}]}'
    assert size >= len(raw)
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def test_an_announced_body_over_the_cap_is_a_413_unread(redis_url: str, token: str) -> None:
    api = capped(redis_url, token, 1024)
    r = post_raw(api, "/v1/signals", signals_of(1025))
    assert r.status_code == 413, r.text
    assert "MOBILITY_API_MAX_BODY_BYTES" in r.json()["detail"]
    at_cap = post_raw(api, "/v1/signals", signals_of(1024))
    assert at_cap.status_code == 404 and "nowhere" in at_cap.json()["detail"]  # read, checked
    # without a token too: the cap comes before anything reads the body
    r = api.post("/v1/signals", content=signals_of(1025), headers={"Authorization": ""})
    assert r.status_code == 413, r.text
    # and not a byte of it is read: the refusal answers the announced length
    app = create_app(Settings(redis_url=redis_url, api_max_body_bytes=1024))
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(640):
            pulled += 1
            yield b" " * 16384

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            return await c.post("/v1/signals", content=body(), headers={
                "Authorization": f"Bearer {token}", "Content-Length": str(640 * 16384)})

    r = asyncio.run(post())
    assert r.status_code == 413 and pulled == 0, (r.status_code, pulled)


def test_the_default_cap_is_one_mebibyte(redis_url: str, token: str) -> None:
    api = client(redis_url, token)
    assert post_raw(api, "/v1/signals", signals_of((1 << 20) + 1)).status_code == 413
    assert post_raw(api, "/v1/signals", signals_of(1 << 20)).status_code == 404


@pytest.mark.parametrize("length", ["abc", "-1", "1, 2", "+5", "0x10"])
def test_a_content_length_that_is_no_length_is_a_400(redis_url: str, token: str,
                                                     length: str) -> None:
    app = create_app(Settings(redis_url=redis_url))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            request = c.build_request("POST", "/v1/signals", content=b"{}",
                                      headers={"Authorization": f"Bearer {token}"})
            request.headers["Content-Length"] = length
            return await c.send(request)

    r = asyncio.run(post())
    assert r.status_code == 400 and "Content-Length" in r.json()["detail"], r.text


@pytest.mark.parametrize("with_token", [True, False])
def test_a_streamed_body_over_the_cap_is_cut_off(redis_url: str, token: str,
                                                 with_token: bool) -> None:
    """No Content-Length (chunked): the bytes are counted as they come, and the app stops
    pulling them once past the cap (a 300 MiB body once took the API to 1 GB)."""
    app = create_app(Settings(redis_url=redis_url, api_max_body_bytes=64 * 1024))
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(10_000):  # 10,000 chunks of 16 KiB: 160 MiB, if anyone read them all
            pulled += 1
            yield b" " * 16384

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"} if with_token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            return await c.post("/v1/signals", content=body(),
                                headers={**headers, "content-type": "application/json"})

    r = asyncio.run(post())
    assert r.status_code == 413, r.text
    assert "MOBILITY_API_MAX_BODY_BYTES" in r.json()["detail"]
    assert pulled <= 64 // 16 + 2, pulled  # the cap's worth of chunks, and the one past it


# --- step 7: the error bodies are the declared ones ---


def declared(api: TestClient, path: str, method: str, status: int) -> dict[str, Any]:
    spec = api.get("/openapi.json").json()
    schema = spec["paths"][path][method]["responses"][str(status)]["content"][
        "application/json"]["schema"]
    name = schema["$ref"].rsplit("/", 1)[-1]
    return {"name": name, **spec["components"]["schemas"][name]}


def test_the_error_bodies_are_the_declared_ones(api: TestClient, api_fi: TestClient,
                                                ended_move: str) -> None:
    from api.schemas import ErrorOut, ValidationErrorOut

    issues = api.post("/v1/moves", json={"service": "Web"})
    sentence = api.post("/v1/moves", json={**GOOD_MOVE, "faults": ["wire"]})
    for r in (issues, sentence):
        assert r.status_code == 422
        assert declared(api, "/v1/moves", "post", 422)["name"] == "ValidationErrorOut"
        ValidationErrorOut.model_validate(r.json())
    assert isinstance(issues.json()["detail"], list)
    assert isinstance(sentence.json()["detail"], str)
    missing = api.get(f"/v1/moves/{new_move_id()}")
    assert missing.status_code == 404
    assert declared(api, "/v1/moves/{move_id}", "get", 404)["name"] == "ErrorOut"
    ErrorOut.model_validate(missing.json())
    for status in (400, 401, 403, 413):
        assert declared(api, "/v1/signals", "post", status)["name"] == "ErrorOut"
    assert declared(api, "/v1/signals", "post", 409)["name"] == "ErrorOut"
    assert declared(api, "/v1/signals", "post", 429)["name"] == "ErrorOut"
    spec = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)  # FastAPI's, which the handler never sent


def test_a_stream_whose_move_vanishes_ends_with_an_error_event(api: TestClient,
                                                               redis_url: str,
                                                               ended_move: str) -> None:
    """Once the 200 is sent, what goes wrong ends the stream with an ``error`` event (the
    move's record gone here), never a stream cut in the middle of an event."""
    reg = Registry.from_url(redis_url)
    reg.put_service(Service(name="gone", workload="echo",
                            instance=Instance(cluster="core", node="n0", pod="p-gone")))
    move = Move(id=new_move_id(), service="gone", from_cluster="core", to_cluster="edge",
                created_at=time.time())
    reg.create_move(move)
    reg.add_event(Event(move_id=move.id, kind="status", ts=time.time(), detail="pending"),
                  ttl_s=600)
    lines = []
    with api.stream("GET", f"/v1/moves/{move.id}/events") as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data:") and not any(x.startswith("event: error")
                                                    for x in lines):
                reg.r.delete(keys.move(move.id))  # the record goes; its stream stays
    reg.r.close()
    assert "event: error" in lines, lines
    error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    assert "does not exist" in error["detail"]
