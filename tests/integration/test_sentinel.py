"""Redis that survives losing its host: the lab stack on Redis Sentinel.

Aspects: a lab stack of its own in Sentinel mode (a master, a replica and three sentinels on
the host link, every component reaching the master through the sentinels); the registry
through the sentinels survives its master being frozen (SIGSTOP, as a lost host): a write
before, the failover, a write after, both there on the new master; a move in flight while
the master's host is lost (its server killed while the move is held after WIRE, then let
go through the new master) ends succeeded or
rolled_back with the probe losing nothing; afterwards the registry, the API and the workers
work on the new master (another move succeeds). How long each failover took is printed (a
measurement, never asserted).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from cli import supervise
from cli.stack import Stack
from dataplane.lab import topology
from mobility import tokens
from mobility.tokens import Role
from tests.conftest import SECOND_UNDERLAY, STATE_TTL_S, free_port, require_root, unique_prefix
from tests.integration.test_moves import Pair, wait_event, wait_terminal

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A whole lab (as ``lab_stack``) whose Redis is a master, a replica and three sentinels;
    torn down at the end, leaving no namespace, link or process of the lab."""
    require_root()
    name = unique_prefix("sms")
    plan = topology.plan(topology.load_config(name=name, underlay=SECOND_UNDERLAY))
    stack = Stack(plan=plan, redis_port=free_port(), api_port=free_port(), fault_injection=True,
                  env_file=str(tmp_path_factory.mktemp("sentinel") / "stack.env"),
                  extra_env={"MOBILITY_STATE_TTL_S": str(STATE_TTL_S)},
                  sentinel=True, replica_port=free_port(),
                  sentinel_ports=(free_port(), free_port(), free_port()))
    try:
        stack.up()
        yield stack
    finally:
        import shutil

        from cli.stack import reap_children

        for role in ("redis", "redis-replica"):  # a server the test froze ends, not hangs
            pid = topology.recorded_pid(plan.run_dir, role)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
        topology.down(name)
        shutil.rmtree(stack.image_dir, ignore_errors=True)
        reap_children()
        assert topology.namespaces_left(name) == []
        for role in ("redis", "redis-replica", "sentinel-0", "sentinel-1", "sentinel-2"):
            assert topology.recorded_pid(plan.run_dir, role) is None, f"{role} left running"
        with open("/proc/net/dev") as fh:
            assert f"{name}-h0" not in fh.read(), "the lab's host link was left behind"


def sentinels(stack: Stack) -> list[redis.Redis]:
    config = stack.sentinel_config()
    assert config is not None
    return [redis.Redis(host=h, port=p, password=config.password, socket_timeout=2,
                        decode_responses=True) for h, p in config.sentinels]


def master_port(stack: Stack) -> int:
    """The master's port as the sentinels' majority sees it."""
    seen: dict[int, int] = {}
    for s in sentinels(stack):
        try:
            addr = s.sentinel_get_master_addr_by_name(stack.sentinel_master)
        except redis.RedisError:
            continue
        finally:
            s.close()
        if isinstance(addr, tuple):
            seen[int(addr[1])] = seen.get(int(addr[1]), 0) + 1
    port, votes = max(seen.items(), key=lambda kv: kv[1])
    assert votes >= 2, seen
    return port


def server_role(stack: Stack, port: int) -> str:
    return "redis" if port == stack.redis_port else "redis-replica"


def wait_master_moved(stack: Stack, old: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = master_port(stack)
        if now != old:
            return now
        time.sleep(0.05)
    raise AssertionError(f"the sentinels did not fail over from port {old}\n{evidence(stack)}")


def wait_replica_back(stack: Stack, timeout: float = 60) -> None:
    """The old master rejoined as the new master's replica, in sync (so another failover
    can happen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for s in sentinels(stack):
            try:
                states.append([r for r in s.sentinel_slaves(stack.sentinel_master)
                               if "s_down" not in r.get("flags", "")
                               and r.get("master-link-status") == "ok"])
            except redis.RedisError:
                states.append([])
            finally:
                s.close()
        if all(states):
            return
        time.sleep(0.2)
    raise AssertionError(f"no replica in sync\n{evidence(stack)}")


def evidence(stack: Stack) -> str:
    """The tails of the sentinel's and servers' logs (the lab is gone after the run)."""
    out = []
    for role in ("sentinel-0", "redis", "redis-replica"):
        path = stack.logs / f"{role}.log"
        if path.exists():
            out.append(f"--- {role}\n" + "\n".join(path.read_text().splitlines()[-15:]))
    return "\n".join(out)


def test_registry_survives_losing_its_master(sentinel_stack: Stack) -> None:
    stack = sentinel_stack
    wait_replica_back(stack)
    reg = stack.registry()
    before, _ = tokens.mint(role=Role.VIEWER, name="before the failover")
    reg.put_token(before)
    old = master_port(stack)
    pid = topology.recorded_pid(stack.run_dir, server_role(stack, old))
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the master's host is gone: no reply, no reset
    t0 = time.monotonic()
    after, _ = tokens.mint(role=Role.VIEWER, name="after the failover")
    done: list[float] = []

    def write() -> None:
        reg.put_token(after)  # retried until the sentinels name the new master
        done.append(time.monotonic() - t0)

    writer = threading.Thread(target=write, daemon=True)
    try:
        writer.start()
        new = wait_master_moved(stack, old)
        failover_s = time.monotonic() - t0
        writer.join(60)
        assert done, "the write after the failover did not get through"
        write_s = done[0]
        assert reg.get_token(before.id) == before, "a write before the failover was lost"
        assert reg.get_token(after.id) == after
        info = reg.r.info("replication")
        assert info["role"] == "master"
    finally:
        os.kill(pid, signal.SIGCONT)
    print(json.dumps({"failover": "SIGSTOP", "new_master_after_s": round(failover_s, 2),
                      "write_after_failover_s": round(write_s, 2), "new_master_port": new}))
    wait_replica_back(stack)
    reg.r.close()


def test_move_while_the_master_fails_over_loses_nothing(sentinel_stack: Stack) -> None:
    stack = sentinel_stack
    with stack.api_client(timeout=60) as api:
        pair = Pair(api, stack, "sen")
        wait_replica_back(stack)
        old = master_port(stack)
        # held once WIRE's work is done, so the failover happens with the move in flight
        r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge",
                                        "faults": ["pause:wire"]})
        assert r.status_code == 202, r.text
        move_id = r.json()["id"]
        wait_event(api, move_id, "fault_paused", "wire")
        # the master's host is lost: its server dies (SIGKILL) and nobody restarts it. Not a
        # coordinated SENTINEL FAILOVER: there the old master takes writes until it is told
        # to follow the new one, and throws them away when it does (asynchronous
        # replication), which no client can tell from a write that landed.
        role = server_role(stack, old)
        pid = topology.recorded_pid(stack.run_dir, role)
        assert pid is not None
        supervise.drop_spec(stack.run_dir, role)  # the supervisor must not bring it back
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        new = wait_master_moved(stack, old)
        failover_s = time.monotonic() - t0
        release = stack.registry()  # through the sentinels: on the new master
        release.release_pause(move_id)
        release.r.close()
        move = wait_terminal(api, move_id, timeout=120)
        assert move["status"] in ("succeeded", "rolled_back"), move
        where = pair.service()
        assert where["moving"] is None, "the lock must be released"
        assert where["instance"]["cluster"] == ("edge" if move["status"] == "succeeded"
                                                else "core"), json.dumps(
            {"move": move, "service": where, "evidence": evidence(stack)})
        pair.wait_replies(300)
        # the registry, API and workers now work on the new master: another move succeeds
        back = "core" if where["instance"]["cluster"] == "edge" else "edge"
        r = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": back})
        assert r.status_code == 202, r.text
        again = wait_terminal(api, r.json()["id"], timeout=120)
        assert again["status"] == "succeeded", (again["error"], move["status"], move["error"])
        pair.wait_replies(300)
        result = pair.finish()
        assert result["lost"] == 0 and result["duplicated"] == 0, result
        assert master_port(stack) == new
        reg = stack.registry()
        assert reg.r.info("replication")["role"] == "master"
        assert reg.get_move(move_id) is not None
        reg.r.close()
    print(json.dumps({"failover": "SIGKILL of the master", "during": "wire",
                      "new_master_after_s": round(failover_s, 2), "move": move["status"],
                      "phase_ms": move.get("phase_ms"), "sent": result.get("sent"),
                      "lost": result["lost"]}))

