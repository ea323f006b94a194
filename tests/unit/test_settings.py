"""Settings in mobility.settings.

Aspects: production refuses a Redis URL without a password and accepts one with it;
development needs none; ``MOBILITY_*`` variables are read; bad values are refused; the password
never appears in repr, str or the JSON dump, nor in the str or repr of the error raised for a
refused production config whose URL carries the secret elsewhere (as a user name, in a query
key other than password=, in the fragment).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mobility.settings import DEV_REDIS_URL, Settings

SECRET = "s3cr3t-Pa55w0rd"


def test_production_without_password_is_refused() -> None:
    with pytest.raises(ValidationError, match="MOBILITY_REDIS_URL must carry a password"):
        Settings(environment="production", redis_url="redis://127.0.0.1:6379/0")


def test_production_with_password_works() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:6379/0"
    s = Settings(environment="production", redis_url=url)
    assert s.environment == "production"
    assert s.redis_url.get_secret_value() == url


def test_production_with_user_and_password_works() -> None:
    s = Settings(environment="production", redis_url=f"rediss://app:{SECRET}@redis.example:6380/1")
    assert s.redis_url.get_secret_value().endswith("/1")


def test_development_needs_no_password() -> None:
    s = Settings()
    assert s.environment == "development"
    assert s.redis_url.get_secret_value() == DEV_REDIS_URL
    assert s.fault_injection is False


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILITY_FAULT_INJECTION", "1")
    monkeypatch.setenv("MOBILITY_API_PORT", "9999")
    s = Settings()
    assert s.fault_injection is True
    assert s.api_url == "http://127.0.0.1:9999"


def test_production_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILITY_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="password"):
        Settings()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("environment", "staging"),
        ("lease_ttl_s", 0),
        ("ready_timeout_s", -1.0),
        ("event_ttl_s", 0),
        ("backend", "k8s"),
    ],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_password_never_printed() -> None:
    s = Settings(environment="production", redis_url=f"redis://:{SECRET}@127.0.0.1:6379/0")
    for text in (
        repr(s),
        str(s),
        repr(s.redis_url),
        str(s.redis_url),
        s.model_dump_json(),
        f"{s}",
        f"{s!r}",
    ):
        assert SECRET not in text
    assert SECRET in s.redis_url.get_secret_value()  # the secret is there, just never shown


@pytest.mark.parametrize(
    "url",
    [
        f"redis://{SECRET}@127.0.0.1:6379/0",  # the secret as a user name, no password
        f"redis://127.0.0.1:6379/0?passwd={SECRET}",  # a query key that is not password=
        f"redis://127.0.0.1:6379/0#{SECRET}",
    ],
)
def test_refusing_a_production_config_never_prints_the_password(url: str) -> None:
    with pytest.raises(ValidationError, match="MOBILITY_REDIS_URL must carry a password") as err:
        Settings(environment="production", redis_url=url)
    # str and repr are what a traceback or a log line shows
    for text in (str(err.value), repr(err.value)):
        assert SECRET not in text
