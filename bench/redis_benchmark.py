"""``redis-benchmark`` SET and GET of the state's value size, as a baseline for the state path.

The issue's yardsticks for a move's state throughput are Redis's own client, not ours: the
SET rate of ``redis-benchmark`` for 64 KiB values, and the *write-then-read ceiling*. A state
byte is written into Redis once (XADD) and read out once (XREAD) on Redis's one core, so the
best a transfer can do is one SET and one GET per value: ``1 / (1/set + 1/get)`` bytes per
second (half the harmonic mean of the two rates). What the state path adds on top is the
encryption, the framing and the application's snapshot.

The commands are those of ``redis-benchmark -t set,get -d 65536`` (50 clients, one command
each in flight), on the bench's own key (:data:`mobility.keys.BENCH_VALUE`, given as a custom
command line) instead of redis-benchmark's ``key:__rand_int__``, so that it stays under the
project's prefix. It runs inside a lab node's network namespace, as the agents reach Redis.

No secret on its command line: redis-benchmark 7.0 takes a password only as ``-a`` (it ignores
``REDISCLI_AUTH``), so it authenticates as a user made for this run only, ``nopass``, allowed
``SET``/``GET``/``PING`` on that one key and nothing else, deleted right after (whatever
happens; a run killed before that leaves it to the next run, which deletes every such user
first). Its name is on the command line, and for the seconds the user lives it is all one
needs to reach Redis as it: anyone who can read this host's process list and reach Redis could
overwrite or read the bench's one value (or make it large); nothing else.
"""

from __future__ import annotations

import csv
import io
import logging
import secrets
import shutil
import subprocess
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mobility.keys import BENCH_VALUE

if TYPE_CHECKING:
    import redis

log = logging.getLogger("bench.redis_benchmark")

BINARY = "redis-benchmark"
CLIENTS = 50  # redis-benchmark's default
USER_PREFIX = "mob-bench-"  # the run's own Redis user (password-less: see measure)


def harmonic_mean(a: float, b: float) -> float:
    return 2 / (1 / a + 1 / b) if a > 0 and b > 0 else 0.0


def write_then_read_ceiling(set_mb_s: float, get_mb_s: float) -> float:
    """Each byte SET once and GET once on one Redis core: half the harmonic mean."""
    return 1 / (1 / set_mb_s + 1 / get_mb_s) if set_mb_s > 0 and get_mb_s > 0 else 0.0


def parse_rps(output: str) -> float:
    """The requests per second of redis-benchmark's ``--csv`` output (one test)."""
    rows = [r for r in csv.reader(io.StringIO(output)) if len(r) >= 2 and r[0] != "test"]
    if len(rows) != 1:
        raise RuntimeError(f"redis-benchmark printed {len(rows)} result rows, expected one")
    return float(rows[0][1])


def _run(namespace: str | None, *, host: str, port: int, user: str, requests: int,
         command: list[str], timeout: float) -> float:
    argv = [BINARY, "-h", host, "-p", str(port), "--user", user, "-a", "unused",
            "-c", str(CLIENTS), "-n", str(requests), "--csv", *command]
    if namespace is not None:
        argv = ["nsenter", f"--net=/run/netns/{namespace}", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed ({done.returncode}): "
                           f"{done.stderr.strip()[-300:]}")
    return parse_rps(done.stdout)


def measure(admin: redis.Redis, *, url: str, writer_ns: str | None, reader_ns: str | None,
            requests: int, size: int, timeout: float = 300.0) -> dict[str, float]:
    """SET from ``writer_ns`` then GET from ``reader_ns`` (None: this namespace) of ``size``
    bytes, ``requests`` each, against the Redis at ``url`` (only its host and port are used);
    MB/s of each (value bytes times requests per second), and the two derived ceilings.
    ``admin`` makes and deletes the run's user."""
    if shutil.which(BINARY) is None:
        raise RuntimeError(f"{BINARY} is not installed (Debian: redis-tools)")
    where = urlsplit(url)
    host, port = where.hostname or "127.0.0.1", where.port or 6379
    # a run killed before its clean-up left its user: it is password-less, so it goes first
    for stale in admin.acl_users():
        name = stale.decode() if isinstance(stale, bytes) else stale
        if name.startswith(USER_PREFIX):
            admin.acl_deluser(name)
    user = f"{USER_PREFIX}{secrets.token_hex(6)}"
    admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", user, "on", "nopass", "resetkeys", f"~{BENCH_VALUE}",
        "resetchannels", "-@all", "+set", "+get", "+ping")
    try:
        value = "x" * size  # redis-benchmark's own -d data is a repeated byte too
        sets = _run(writer_ns, host=host, port=port, user=user, requests=requests,
                    command=["SET", BENCH_VALUE, value], timeout=timeout)
        gets = _run(reader_ns, host=host, port=port, user=user, requests=requests,
                    command=["GET", BENCH_VALUE], timeout=timeout)
    finally:
        try:
            admin.acl_deluser(user)
        finally:
            admin.delete(BENCH_VALUE)
    set_mb_s, get_mb_s = sets * size / 1e6, gets * size / 1e6
    return {
        "set_mb_s": round(set_mb_s, 1),
        "get_mb_s": round(get_mb_s, 1),
        "harmonic_mean_mb_s": round(harmonic_mean(set_mb_s, get_mb_s), 1),
        "write_then_read_ceiling_mb_s": round(write_then_read_ceiling(set_mb_s, get_mb_s), 1),
    }
