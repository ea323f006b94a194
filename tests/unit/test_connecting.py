"""The Redis connection factory's pure parts (mobility.store.connecting).

Aspects: sentinel addresses parsed or refused with a message; the sentinels' password kept out
of repr; the Celery settings for Sentinel (kombu's sentinel:// chain with the master's user,
the master name and sentinel password in the transport options, redbeat's redis-sentinel://
options) keep the given transport options; the settings turn Sentinel on only when sentinels
are named.
"""

from __future__ import annotations

import pytest

from mobility.errors import Invalid
from mobility.settings import Settings
from mobility.store.connecting import SentinelConfig, celery_conf, parse_address

CONFIG = SentinelConfig(sentinels=(("198.18.255.253", 26379), ("198.18.255.253", 26380)),
                        master="lab", password="s3cret")


def test_addresses_are_parsed_or_refused() -> None:
    assert parse_address("127.0.0.1:26379") == ("127.0.0.1", 26379)
    assert parse_address("[::1]:26379") == ("::1", 26379)
    for bad in ("127.0.0.1", ":26379", "h:0", "h:99999", "h:x"):
        with pytest.raises(Invalid, match="host:port"):
            parse_address(bad)


def test_the_sentinel_password_is_not_in_repr() -> None:
    assert "s3cret" not in repr(CONFIG)
    assert CONFIG.sentinel_kwargs()["password"] == "s3cret"


def test_celery_settings_through_sentinel() -> None:
    conf = celery_conf("redis://mob-api:pw@127.0.0.1:6391/0", CONFIG,
                       transport_options={"visibility_timeout": 3600})
    assert conf["broker_url"] == conf["result_backend"] == (
        "sentinel://mob-api:pw@198.18.255.253:26379/0;sentinel://mob-api:pw@198.18.255.253:26380/0")
    options = conf["broker_transport_options"]
    assert isinstance(options, dict)
    assert options["master_name"] == "lab" and options["visibility_timeout"] == 3600
    assert options["sentinel_kwargs"]["password"] == "s3cret"
    assert str(conf["redbeat_redis_url"]).startswith("redis-sentinel://mob-api:pw@")
    redbeat = conf["redbeat_redis_options"]
    assert isinstance(redbeat, dict)
    assert redbeat["service_name"] == "lab" and redbeat["username"] == "mob-api"
    assert redbeat["sentinels"] == [("198.18.255.253", 26379), ("198.18.255.253", 26380)]


def test_sentinel_only_when_sentinels_are_named() -> None:
    assert SentinelConfig.from_settings(Settings()) is None
    s = Settings(redis_sentinels=("127.0.0.1:26379",), redis_sentinel_master="m")
    config = SentinelConfig.from_settings(s)
    assert config is not None and config.sentinels == (("127.0.0.1", 26379),)
    assert config.master == "m" and config.password == ""
