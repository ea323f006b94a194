"""Request validation of the HTTP API, with a real Redis holding the caller's token.

Every route needs a token (a request without one is refused before its body is read), so the
app runs against a real Redis with an operator token in it; nothing else is stored there.

Aspects: POST /v1/moves with malformed JSON, a non-object body, missing or extra fields, bad
names (uppercase, too long, bad first character), bad ``faults`` -> 422 with a ``detail``;
``faults`` while fault injection is off -> 422 naming MOBILITY_FAULT_INJECTION; unknown phases
in ``faults`` with fault injection on -> 422 naming them; POST /v1/services with bad bodies ->
422; GET /v1/moves with a bad ``limit`` -> 422; bad input never gives a 500, not even when it
holds NaN.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette warns when its test client runs on httpx instead of httpx2; the venv has
    # httpx (a project dependency), and this warning is about the test tooling, not the code.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from api.app import create_app
from mobility import tokens
from mobility.settings import Settings
from mobility.store import Registry
from tests.conftest import RedisServer

GOOD_MOVE = {"service": "web", "to_cluster": "edge"}
GOOD_SERVICE = {"name": "web", "workload": "echo", "cluster": "core"}


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url.rsplit("/", 1)[0] + "/6"


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


@pytest.mark.parametrize("missing", ["name", "workload", "cluster"])
def test_service_missing_field(api: TestClient, missing: str) -> None:
    body = {k: v for k, v in GOOD_SERVICE.items() if k != missing}
    detail = detail_of(api.post("/v1/services", json=body))
    assert any(e["type"] == "missing" and e["loc"][-1] == missing for e in detail)


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
