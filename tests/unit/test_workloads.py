"""Workload parameter checks in mobility.workloads.check.

Aspects: defaults filled in (and never shared between calls); int and float parameters
converted to their declared kind; Invalid (with an actionable message) for an unknown workload,
an unknown parameter, a bool, a string, a non-whole value for an int, a value out of range;
non-finite values refused with Invalid too.
"""

from __future__ import annotations

import pytest

from mobility.errors import Invalid
from mobility.workloads import check


def test_defaults_are_filled_in() -> None:
    assert check("echo", {}) == {"port": 7000}
    assert check("probe", {}) == {"port": 7000, "rate": 1000.0, "count": 0}


def test_given_values_override_defaults() -> None:
    assert check("probe", {"port": 9000, "count": 5}) == {"port": 9000, "rate": 1000.0, "count": 5}


def test_defaults_are_not_mutated_by_a_call() -> None:
    check("echo", {"port": 8080})
    assert check("echo", {}) == {"port": 7000}


def test_values_take_their_declared_kind() -> None:
    out = check("probe", {"port": 8080.0, "rate": 10})
    assert out["port"] == 8080 and type(out["port"]) is int
    assert out["rate"] == 10.0 and type(out["rate"]) is float


def test_bounds_are_inclusive() -> None:
    assert check("echo", {"port": 1})["port"] == 1
    assert check("echo", {"port": 65535})["port"] == 65535
    assert check("probe", {"rate": 20000})["rate"] == 20000.0


def test_unknown_workload_lists_known_ones() -> None:
    with pytest.raises(Invalid) as info:
        check("shell", {})
    assert "'shell'" in str(info.value)
    for known in ("echo", "probe", "sessions", "middlebox"):
        assert known in str(info.value)


def test_unknown_parameter_names_the_accepted_ones() -> None:
    with pytest.raises(Invalid) as info:
        check("echo", {"cmd": 1})
    assert "'cmd'" in str(info.value)
    assert "port" in str(info.value)


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_refused(value: bool) -> None:
    with pytest.raises(Invalid, match="must be a number"):
        check("echo", {"port": value})


def test_string_is_refused() -> None:
    with pytest.raises(Invalid, match="must be a number"):
        check("echo", {"port": "7000"})


@pytest.mark.parametrize("value", [80.5, 7000.001])
def test_non_whole_value_for_an_int_is_refused(value: float) -> None:
    with pytest.raises(Invalid, match="whole number"):
        check("echo", {"port": value})


def test_non_whole_value_for_a_float_is_fine() -> None:
    assert check("probe", {"rate": 2.5})["rate"] == 2.5


@pytest.mark.parametrize(
    ("workload", "key", "value"),
    [
        ("echo", "port", 0),
        ("echo", "port", 65536),
        ("echo", "port", -1),
        ("probe", "rate", 0.5),
        ("probe", "rate", 20000.5),
        ("probe", "count", -1),
        ("probe", "count", 10**9 + 1),
        ("probe", "rate", float("inf")),
        ("probe", "rate", float("nan")),
    ],
)
def test_out_of_range_is_refused(workload: str, key: str, value: float) -> None:
    with pytest.raises(Invalid, match=r"between|finite"):
        check(workload, {key: value})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_value_for_an_int_is_invalid(value: float) -> None:
    try:
        check("echo", {"port": value})
    except Invalid:
        return
    except Exception as exc:  # the bug: any other type escapes the API's error mapping
        pytest.fail(f"{type(exc).__name__} instead of Invalid: {exc}")
    pytest.fail("a non-finite port was accepted")
