"""Each component's Redis user against a real Redis server loaded from the ACL file the stack
writes (mobility.store.acl), and identity allocation across a real restart.

Aspects: a client that does not say who it is can do nothing, nor log in as ``default`` with
any of the users' passwords, and no password is in the file; each component's user can do its
job (the registry calls it makes, Celery's queue, binding, result and remote-control keys) and
is refused outside it: a
node agent reads the registry, writes health, consumes its own queue, and is refused state
keys, tokens, moves, credentials, the sequences, other nodes' queues, the orchestration queue,
publishing remote control, and administration; the API cannot write links, sequences or
health nor read state; beat touches redbeat and the orchestration queue only; the
orchestrator expires state keys but cannot read them nor the tokens, and makes per-move users;
a per-move user moves real state between two real state agents, is refused another move's
keys, the registry, the tokens and every command the channel does not use, and once deleted
its connections are closed and it cannot log in; what restricted users wrote in transactions
and scripts survives a crash (the append-only file replayed); after a crash that lost the
counters' last increments (a counter set back, then SIGKILL, append-only file on) the next
VNI, link block
and pod number are above every one the registry's records use, while a fresh Redis starts at
the first ones and a second check in the same run changes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mobility import keys
from mobility.models import Instance, Link, LinkEnd, Move, PathHealth, Service
from mobility.store import Registry, acl
from mobility.store.identities import BLOCK_MARGIN, POD_MARGIN, VNI_BASE, VNI_MARGIN
from mobility.tokens import Role, mint
from state_transfer.agent import Agent, StoreState
from state_transfer.control import AgentClient
from state_transfer.errors import StateTransferError
from state_transfer.frames import new_key
from state_transfer.store import StateStore
from tests.conftest import RedisServer
from workers.routing import ORCHESTRATION, node_queue

WAIT_S = 30.0  # an upper bound for a call, never a measured time
LAB = "acl"
PIDBOX = keys.KOMBU_FANOUT_PREFIX.format(db=0) + keys.CELERY_PIDBOX
NOPERM = redis.exceptions.NoPermissionError


class AclServer:
    """A Redis server started with an ACL file as the stack writes it (agents of core/n1 and
    core/n10, so a glob that let n1 reach n10's queue would show)."""

    def __init__(self, workdir: Path) -> None:
        self.users = acl.component_users(
            orchestration=ORCHESTRATION, node_queues=node_queue("*", "*"),
            orchestrator_worker=f"orchestrator@{LAB}",
            agents={acl.agent_user("core", n): acl.CeleryRole(
                consumes=(node_queue("core", n),), worker=f"agent-core-{n}@{LAB}")
                for n in ("n1", "n10")})
        self.passwords = {u: f"{uuid.uuid4().hex}-{u}" for u in self.users}
        self.acl_path = workdir / "users.acl"
        self.acl_path.write_text(acl.acl_file(self.users, self.passwords,
                                              default_digest=acl.locked_digest()))
        self.server = RedisServer(workdir, aclfile=self.acl_path, appendonly=True)
        self.clients: list[redis.Redis] = []

    def url(self, user: str) -> str:
        return self.server.url_for(user, self.passwords[user])

    def client(self, user: str) -> redis.Redis:
        c = redis.Redis.from_url(self.url(user), socket_timeout=WAIT_S)
        self.clients.append(c)
        return c

    def registry(self, user: str) -> Registry:
        return Registry(self.client(user))

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServer]:
    s = AclServer(tmp_path_factory.mktemp("acl"))
    try:
        yield s
    finally:
        s.close()


def refused(fn: Callable[[], object]) -> None:
    with pytest.raises(NOPERM):
        fn()


def seed(admin: Registry) -> Move:
    """A service with a link, a token, a move, a state key of another move."""
    admin.put_service(Service(name="svc", workload="echo", links=["svc.peer"],
                              instance=Instance(cluster="core", node="n1", pod="svc-7")))
    admin.put_link(Link(id="svc.peer", vni=1005, ends=(
        LinkEnd(service="svc", ifname="nsm-1", mac="02:6d:00:00:05:01", ip="169.254.1.1"),
        LinkEnd(service="peer", ifname="nsm-1", mac="02:6d:00:00:05:02", ip="169.254.1.2"))))
    record, _ = mint(role=Role.ADMIN, name="t")
    admin.put_token(record)
    move = Move(id="mv-20260101000000-abcdef", service="svc", from_cluster="core",
                to_cluster="edge", created_at=time.time(),
                source=Instance(cluster="core", node="n1", pod="svc-7"))
    admin.create_move(move)
    admin.r.xadd(keys.state_frames("mv-20260101000000-000000"), {"f": b"x"})
    return move


def test_nobody_logs_in_as_default_and_the_file_holds_no_password(srv: AclServer) -> None:
    text = srv.acl_path.read_text()
    assert all(p not in text for p in srv.passwords.values())
    anonymous = redis.Redis(port=srv.server.port, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()
    api = srv.client(acl.API)
    for pw in srv.passwords.values():
        with pytest.raises(redis.exceptions.AuthenticationError):
            api.execute_command("AUTH", "default", pw)  # type: ignore[no-untyped-call]
    assert api.ping()


def test_a_node_agent_does_its_job_and_nothing_else(srv: AclServer) -> None:
    admin = srv.registry(acl.ADMIN)
    move = seed(admin)
    agent = srv.registry(acl.agent_user("core", "n1"))
    r = agent.r
    # its job: the reconciler's reads and writes, its own queue, Celery's results
    assert agent.get_service("svc") is not None and agent.get_link("svc.peer").vni == 1005
    assert "svc" in agent.services() and agent.clusters() == {}
    agent.put_health("svc", PathHealth(ok=True, checked_at=time.time(), node="core.n1"),
                     ttl_s=10)
    assert agent.count_reconcile_pass("core.n1") == 1
    own = node_queue("core", "n1")
    r.lpush(own, b"m")
    assert r.brpop([own, f"{own}{keys.KOMBU_PRIORITY_SEP}3"], timeout=1) is not None
    r.sadd(f"{keys.KOMBU_BINDING_PREFIX}{own}", "x")
    r.hset("unacked", "tag", "m")
    r.execute_command(  # type: ignore[no-untyped-call]
        "SETEX", f"{keys.CELERY_RESULT_PREFIX}abc", 10, "r")  # as Celery does
    r.publish(f"{keys.CELERY_RESULT_PREFIX}abc", "r")
    pubsub = r.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe(PIDBOX)  # it receives remote control...
    pubsub.close()
    # ...and is refused everything else
    refused(lambda: r.publish(PIDBOX, "shutdown"))  # ...but never sends it
    refused(lambda: r.get(keys.state_frames(move.id)))
    refused(lambda: r.xadd(keys.state_frames(move.id), {"f": b"x"}))
    refused(lambda: r.xread({keys.state_frames("mv-20260101000000-000000"): "0"}))
    refused(lambda: agent.get_token("anything"))
    refused(lambda: r.smembers(keys.TOKENS))
    refused(lambda: agent.get_move(move.id))
    refused(lambda: r.get(keys.credentials("c")))
    refused(lambda: r.incr(keys.VNI_SEQ))
    refused(lambda: agent.put_service(Service(name="svc", workload="echo")))
    refused(lambda: r.set(keys.service_lock("svc"), "me"))
    for queue in (node_queue("core", "n10"), node_queue("edge", "n1"), ORCHESTRATION):
        refused(lambda q=queue: r.lpush(q, b"m"))  # type: ignore[misc]
        refused(lambda q=queue: r.brpop([q], timeout=1))  # type: ignore[misc]
    refused(lambda: r.sadd(f"{keys.KOMBU_BINDING_PREFIX}{ORCHESTRATION}", "x"))
    refused(lambda: r.keys("*"))
    refused(lambda: r.flushall())
    refused(lambda: r.config_get("*"))
    refused(lambda: r.acl_setuser("evil", enabled=True, nopass=True))
    refused(lambda: r.execute_command("SCAN", "0"))  # type: ignore[no-untyped-call]


def test_the_api_records_requests_and_is_refused_the_rest(srv: AclServer) -> None:
    api = srv.registry(acl.API)
    r = api.r
    assert api.get_service("svc") is not None
    # create_move: a script declaring the service's key and the locks
    move = Move(id="mv-20260101000001-abcdef", service="peerless", from_cluster="core",
                to_cluster="edge", created_at=time.time(),
                source=Instance(cluster="core", node="n1", pod="p-1"))
    srv.registry(acl.ADMIN).put_service(Service(name="peerless", workload="echo"))
    api.create_move(move)
    assert api.lock_owner("peerless") == move.id
    record, _ = mint(role=Role.VIEWER, name="v")
    api.put_token(record)
    assert api.get_token(record.id) is not None
    r.lpush(ORCHESTRATION, b"task")
    refused(lambda: r.lpush(node_queue("core", "n1"), b"task"))
    refused(lambda: api.put_link(Link(id="x.y", vni=1, ends=(
        LinkEnd(service="x", ifname="nsm-1", mac="m", ip="i"),
        LinkEnd(service="y", ifname="nsm-1", mac="m", ip="i")))))
    refused(lambda: api.next_vni())
    refused(lambda: api.put_health("svc", PathHealth(ok=True, checked_at=0, node="n"),
                                   ttl_s=1))
    refused(lambda: r.get(keys.state_frames(move.id)))
    refused(lambda: r.expire(keys.state_frames(move.id), 1))
    refused(lambda: r.acl_setuser("evil", enabled=True, nopass=True))
    refused(lambda: r.info())


def test_beat_touches_redbeat_and_the_orchestration_queue_only(srv: AclServer) -> None:
    r = srv.client(acl.BEAT)
    r.hset(f"{keys.REDBEAT_PREFIX}rebalance", "definition", "{}")
    r.zadd(f"{keys.REDBEAT_PREFIX}:schedule", {"rebalance": 1})
    r.lpush(ORCHESTRATION, b"tick")
    refused(lambda: r.get(keys.service("svc")))
    refused(lambda: r.smembers(keys.TOKENS))
    refused(lambda: r.get(keys.move("mv-20260101000000-abcdef")))
    refused(lambda: r.lpush(node_queue("core", "n1"), b"x"))


def test_the_orchestrator_expires_state_but_never_reads_it(srv: AclServer) -> None:
    orch = srv.registry(acl.ORCHESTRATOR)
    r = orch.r
    other = "mv-20260101000000-000000"
    orch.expire_state(other, 60)
    assert 0 < srv.client(acl.ADMIN).ttl(keys.state_frames(other)) <= 60
    refused(lambda: r.xread({keys.state_frames(other): "0"}))
    refused(lambda: r.get(keys.state_acked(other)))
    refused(lambda: orch.get_token("t"))
    refused(lambda: r.config_get("*"))
    refused(lambda: r.flushall())
    assert orch.next_vni() > VNI_BASE  # INFO (restarts) and the counters' script
    for queue in (ORCHESTRATION, node_queue("core", "n1"), node_queue("edge", "n7")):
        r.lpush(queue, b"m")


def agent_pair(tmp_path: Path) -> tuple[list[Agent], AgentClient, AgentClient, StateStore]:
    src, dst = StateStore(), StateStore()
    for i in range(64):
        src.set(f"k{i}", bytes([i]) * 4096)
    agents = [Agent(StoreState(src), socket_path=str(tmp_path / "src.sock")),
              Agent(StoreState(dst), socket_path=str(tmp_path / "dst.sock"))]
    for a in agents:
        a.start()
    return (agents, AgentClient(agents[0].socket_path, timeout=WAIT_S),
            AgentClient(agents[1].socket_path, timeout=WAIT_S), dst)


def transfer(source: AgentClient, target: AgentClient, *, move: str, url: str) -> dict[str, Any]:
    key = new_key()
    for client, role in ((source, "source"), (target, "target")):
        client.call("open", move=move, key=key, role=role, redis_url=url, stall_timeout_s=5)
    with ThreadPoolExecutor(1) as pool:
        restoring = pool.submit(target.call, "restore", move=move, round=1)
        sent = source.call("snapshot", move=move, round=1, since=0)
        restored = restoring.result(timeout=WAIT_S)
    assert restored["frames"] == sent["frames"]
    return dict(sent)


def test_a_per_move_user_moves_state_and_touches_nothing_else(srv: AclServer,
                                                              tmp_path: Path) -> None:
    users = acl.StateUsers(srv.client(acl.ORCHESTRATOR))
    move, other = "mv-20260101000002-abcdef", "mv-20260101000000-000000"
    url = users.open(move, via=f"redis://127.0.0.1:{srv.server.port}/0")
    assert url.startswith(f"redis://{acl.move_user(move)}:")
    assert users.open(move, via=url) != url  # another password; the first keeps working
    agents, source, target, dst = agent_pair(tmp_path)
    try:
        sent = transfer(source, target, move=move, url=url)
        assert sent["keys"] == 64 and dst.get("k7") == bytes([7]) * 4096
        # the same user, on another move's keys: refused
        with pytest.raises(StateTransferError, match=r"no permissions|NOPERM"):
            transfer(source, target, move=other, url=url)
    finally:
        for c in (source, target):
            c.close()
        for a in agents:
            a.stop()
    r = redis.Redis.from_url(url, socket_timeout=WAIT_S)
    try:
        r.incrby(keys.state_acked(move), 1)
        refused(lambda: r.set(keys.state_acked(move), 1))  # not a command the channel uses
        refused(lambda: r.get(keys.state_acked(other)))
        refused(lambda: r.xadd(keys.state_frames(other), {"f": b"x"}))
        refused(lambda: r.get(keys.service("svc")))
        refused(lambda: r.smembers(keys.TOKENS))
        refused(lambda: r.keys("*"))
        refused(lambda: r.lpush(ORCHESTRATION, b"m"))
        refused(lambda: r.publish(PIDBOX, "m"))
        assert move in users.users()
        assert users.close(move)
        # deleting the user closed its connection, and it cannot log in again
        with pytest.raises(redis.exceptions.ConnectionError):
            r.ping()
    finally:
        r.close()
    again = redis.Redis.from_url(url)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            again.ping()
    finally:
        again.close()
    assert not users.close(move)


def test_prune_removes_the_users_of_moves_that_ended(srv: AclServer) -> None:
    users = acl.StateUsers(srv.client(acl.ORCHESTRATOR))
    live, ended = "mv-20260101000003-aaaaaa", "mv-20260101000004-bbbbbb"
    base = f"redis://127.0.0.1:{srv.server.port}/0"
    users.open(live, via=base)
    users.open(ended, via=base)
    assert users.prune(keep=[live]) == [ended]
    assert users.users() == [live]
    users.close(live)


def test_the_shared_state_user_reaches_state_keys_only(srv: AclServer) -> None:
    r = srv.client(acl.STATE)
    r.xadd(keys.state_frames("mv-20260101000005-cccccc"), {"f": b"x"})
    refused(lambda: r.get(keys.service("svc")))
    refused(lambda: r.lpush(ORCHESTRATION, b"m"))


def test_what_restricted_users_wrote_in_transactions_and_scripts_survives_a_crash(
        srv: AclServer) -> None:
    """Redis 7.0 replays the append-only file's MULTI/EXEC blocks (a script's effects too) as
    the default user and checks its permissions again at EXEC: with that user off, every one
    of them was dropped at a restart (redis/redis#14541). Here they all come back."""
    admin = srv.registry(acl.ADMIN)
    admin.put_service(Service(name="durable", workload="echo"))
    move = Move(id="mv-20260101000009-dddddd", service="durable", from_cluster="core",
                to_cluster="edge", created_at=time.time(),
                source=Instance(cluster="core", node="n1", pod="durable-1"))
    srv.registry(acl.API).create_move(move)  # a script
    record, _ = mint(role=Role.OPERATOR, name="durable")
    srv.registry(acl.API).put_token(record)  # a MULTI/EXEC pipeline
    vni = srv.registry(acl.ORCHESTRATOR).next_vni()  # a script, after INFO
    time.sleep(1.5)  # everysec: on disk
    srv.server.restart(crash=True)
    after = srv.registry(acl.ADMIN)
    assert after.get_move(move.id).service == "durable"
    assert after.lock_owner("durable") == move.id
    assert move.id in {m.id for m in after.active_moves()}
    assert after.get_token(record.id) is not None
    assert VNI_BASE + int(after.r.get(keys.VNI_SEQ) or 0) >= vni


# --- identities across a restart ---


def links_of(reg: Registry, n: int) -> list[Link]:
    """Deploy-like: ``n`` linked services allocated from the registry's counters."""
    from mobility.deploying import link_identity

    made = []
    for i in range(n):
        (mac_a, ip_a), (mac_b, ip_b) = link_identity(reg.next_link_block())
        link = Link(id=f"s{i}.p{i}", vni=reg.next_vni(), ends=(
            LinkEnd(service=f"s{i}", ifname="nsm-1", mac=mac_a, ip=ip_a),
            LinkEnd(service=f"p{i}", ifname="nsm-1", mac=mac_b, ip=ip_b)))
        reg.put_link(link)
        reg.put_service(Service(name=f"s{i}", workload="echo", links=[link.id],
                                instance=Instance(cluster="core", node="n1",
                                                  pod=f"s{i}-{reg.next_pod_index()}")))
        made.append(link)
    return made


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, appendonly=True)
    try:
        yield server
    finally:
        server.stop()


def test_identities_stay_unique_after_a_crash_that_lost_increments(
        aof_server: RedisServer) -> None:
    reg = Registry.from_url(aof_server.url)
    try:
        assert reg.next_vni() == VNI_BASE + 1  # a fresh Redis starts at the first ones
        assert reg.next_link_block() == 1 and reg.next_pod_index() == 1
        links = links_of(reg, 5)
        # the last increments lost: the counters went back to where they were before
        reg.r.set(keys.VNI_SEQ, 1)
        reg.r.set(keys.LINK_BLOCK_SEQ, 1)
        reg.r.set(keys.POD_SEQ, 1)
        time.sleep(1.5)  # everysec: on disk now, as a crash that lost them would leave them
        aof_server.restart(crash=True)
        assert reg.get_link(links[-1].id) == links[-1]  # the records came back
        vni, block, pod = reg.next_vni(), reg.next_link_block(), reg.next_pod_index()
        used_vnis = {link.vni for link in links}
        assert vni not in used_vnis and vni > max(used_vnis)
        assert vni >= max(used_vnis) + VNI_MARGIN
        assert block > 6 + BLOCK_MARGIN - 1
        assert pod > 6 + POD_MARGIN - 1
        # and in the same run, the counters are trusted again: no second jump
        assert reg.next_vni() == vni + 1
        assert reg.check_counters() is False
    finally:
        reg.r.close()


def test_a_clean_restart_keeps_the_counters_with_the_data(aof_server: RedisServer) -> None:
    reg = Registry.from_url(aof_server.url)
    try:
        links = links_of(reg, 2)
        aof_server.restart()
        assert reg.get_link(links[0].id) == links[0]
        assert reg.next_vni() > max(link.vni for link in links)
    finally:
        reg.r.close()
