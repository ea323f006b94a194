"""Key components and the OpenAPI's error declarations, without any service.

Aspects: a signal key built from safe parts parses back to exactly those parts, for any such
parts (property test); a part outside the alphabet is refused when building and makes
parsing answer None, never raise, whatever the key; the alphabet has no separator, glob or
space; what ``new_move_id`` makes is a valid move id and ``<id>:events`` is not; a stream id
the pattern allows is below 2**64 in both parts (what Redis takes); the API's series are the
engine's; every operation of the OpenAPI declares 400 and 413, every one behind a token 401
and 403, its 422 is the handler's body (both forms) and FastAPI's own is gone; the rate-limited
route declares 429 and the SSE route its event stream.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.app import create_app
from api.routers.automation import SERIES_NAMES
from api.schemas import ValidationErrorOut
from mobility import automation, keys
from mobility.settings import Settings
from mobility.store import new_move_id

SAFE = st.from_regex(keys.SAFE_COMPONENT, fullmatch=True)


@given(series=SAFE, cluster=SAFE, service=st.none() | SAFE, region=st.none() | SAFE)
def test_a_safe_key_parses_back_to_its_parts(series: str, cluster: str, service: str | None,
                                             region: str | None) -> None:
    key = keys.signal_checked(series, cluster, service, region)
    assert keys.parse_signal(key) == (series, cluster, service, region)


@given(st.text(max_size=80))
def test_parsing_never_raises(tail: str) -> None:
    parts = keys.parse_signal(keys.SIGNAL_PREFIX + tail)
    assert parts is None or all(p is None or keys.safe_component(p) for p in parts)


@pytest.mark.parametrize("bad", ["eu|x", "a:b", "EU", "*", "a?", "a b", "", "-a", "a" * 64,
                                 "é", "a\n"])
def test_an_unsafe_part_is_refused(bad: str) -> None:
    assert not keys.safe_component(bad)
    with pytest.raises(ValueError, match="cannot be part of a key"):
        keys.signal_checked("latency_ms", "core", "web", bad)
    if bad:  # (an empty part is how a key says "no region")
        assert keys.parse_signal(keys.signal("latency_ms", "core", "web", bad)) is None


def test_move_ids() -> None:
    mid = new_move_id()
    assert keys.valid_move_id(mid)
    assert not keys.valid_move_id(f"{mid}:events")
    assert not keys.valid_move_id(mid.upper())


def test_a_stream_id_the_pattern_allows_fits_redis() -> None:
    biggest = "9" * 19
    assert re.fullmatch(keys.STREAM_ID, f"{biggest}-{biggest}")
    assert int(biggest) < 2 ** 64
    assert not re.fullmatch(keys.STREAM_ID, f"{'9' * 20}-0")


def test_the_api_series_are_the_engine_series() -> None:
    assert set(SERIES_NAMES) == automation.SERIES


@pytest.fixture(scope="module")
def spec() -> dict[str, object]:
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()  # type: ignore[arg-type]


def operations(spec: dict[str, object]) -> list[tuple[str, str, dict[str, object]]]:
    return [(m.upper(), p, op) for p, ops in spec["paths"].items()  # type: ignore[attr-defined]
            for m, op in ops.items()]


def test_every_operation_declares_its_error_answers(spec: dict[str, object]) -> None:
    ops = operations(spec)
    assert len(ops) > 30
    for method, path, op in ops:
        responses = op["responses"]  # type: ignore[index]
        for code in ("400", "413"):
            assert code in responses, (method, path, code)
        if path != "/healthz":
            for code in ("401", "403"):
                assert code in responses, (method, path, code)
        if "422" in responses:
            schema = responses["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ValidationErrorOut"}, (method, path)
        for code, answer in responses.items():
            if code[0] in "45":
                assert "$ref" in answer["content"]["application/json"]["schema"], (path, code)
    text = repr(spec)
    assert "HTTPValidationError" not in text
    # the 422 body is the issues (the schema's) or a sentence (a check's): both declared
    detail = spec["components"]["schemas"]["ValidationErrorOut"]["properties"]["detail"]  # type: ignore[index]
    assert detail["anyOf"] == [
        {"type": "array", "items": {"$ref": "#/components/schemas/Issue"}}, {"type": "string"}]
    issue = spec["components"]["schemas"]["Issue"]  # type: ignore[index]
    assert set(issue["required"]) == {"loc", "msg", "type"}
    ValidationErrorOut.model_validate({"detail": "a sentence"})
    ValidationErrorOut.model_validate({"detail": [{"loc": ["body", 0], "msg": "m", "type": "t"}]})


def test_route_specific_answers(spec: dict[str, object]) -> None:
    paths = spec["paths"]
    assert "429" in paths["/v1/signals"]["post"]["responses"]  # type: ignore[index]
    assert "409" in paths["/v1/signals"]["post"]["responses"]  # type: ignore[index]
    assert "404" in paths["/v1/moves/{move_id}"]["get"]["responses"]  # type: ignore[index]
    assert "503" in paths["/healthz"]["get"]["responses"]  # type: ignore[index]
    events = paths["/v1/moves/{move_id}/events"]["get"]["responses"]["200"]  # type: ignore[index]
    assert list(events["content"]) == ["text/event-stream"]
    params = {p["name"]: p for p in paths["/v1/moves/{move_id}/events"]["get"]["parameters"]}  # type: ignore[index]
    assert params["move_id"]["schema"]["pattern"] == keys.MOVE_ID
    assert params["last-event-id"]["schema"]["pattern"] == keys.STREAM_ID
    every = spec["components"]["schemas"]["IntervalSchedule"]["properties"]["every_s"]  # type: ignore[index]
    assert every["minimum"] == 1
