"""The redis-benchmark baseline of bench.state, against a real Redis with the real binary.

Aspects: it measures SET and GET of the asked size through a user made for the run alone,
which is gone afterwards with the bench's value (no password ever on redis-benchmark's command
line: the user has none, and may touch that one key only); the two derived figures are the
harmonic mean and the write-then-read ceiling (half of it); a user a killed run left is deleted
by the next run; redis-benchmark's CSV is read,
and output without exactly one result is an error.
"""

from __future__ import annotations

import pytest
import redis

from bench import redis_benchmark
from mobility.keys import BENCH_VALUE
from tests.conftest import RedisServer


def test_set_and_get_through_a_user_of_the_run_only(redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    try:
        users_before = set(admin.acl_users())
        out = redis_benchmark.measure(admin, url=redis_server.url, writer_ns=None,
                                      reader_ns=None, requests=200, size=65536)
        assert out["set_mb_s"] > 0 and out["get_mb_s"] > 0
        assert out["harmonic_mean_mb_s"] == pytest.approx(
            2 / (1 / out["set_mb_s"] + 1 / out["get_mb_s"]), rel=0.01)
        assert out["write_then_read_ceiling_mb_s"] == pytest.approx(
            out["harmonic_mean_mb_s"] / 2, rel=0.01)
        assert set(admin.acl_users()) == users_before
        assert not admin.exists(BENCH_VALUE)
    finally:
        admin.close()


def test_a_user_a_killed_run_left_is_deleted_by_the_next(redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    stale = f"{redis_benchmark.USER_PREFIX}left0ver"
    try:
        admin.execute_command("ACL", "SETUSER", stale, "on", "nopass", f"~{BENCH_VALUE}",
                              "+get")
        redis_benchmark.measure(admin, url=redis_server.url, writer_ns=None, reader_ns=None,
                                requests=50, size=1024)
        names = {u.decode() if isinstance(u, bytes) else u for u in admin.acl_users()}
        assert not any(n.startswith(redis_benchmark.USER_PREFIX) for n in names), names
    finally:
        admin.acl_deluser(stale)
        admin.close()


def test_the_ceilings() -> None:
    assert redis_benchmark.harmonic_mean(100.0, 300.0) == pytest.approx(150.0)
    assert redis_benchmark.write_then_read_ceiling(100.0, 300.0) == pytest.approx(75.0)
    assert redis_benchmark.write_then_read_ceiling(0.0, 300.0) == 0.0


def test_the_csv_is_read_and_anything_else_refused() -> None:
    csv = ('"test","rps","avg_latency_ms"\n'
           '"SET mob:bench:value xxxx","1891.43","17.759"\n')
    assert redis_benchmark.parse_rps(csv) == pytest.approx(1891.43)
    with pytest.raises(RuntimeError, match="0 result rows"):
        redis_benchmark.parse_rps("Could not connect to Redis\n")
