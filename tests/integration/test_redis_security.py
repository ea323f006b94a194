"""The lab stack's Redis: its credentials, its users and its persistence, on the real stack.

Aspects: no password of any Redis user is in the command line of any process on the machine,
in the argv or environment the stack recorded for the processes it started, nor in the
environment of any of them (Redis reads a 0600 config and ACL file holding digests only; each
component reads its URL from its own 0600 env file); Redis
runs with the append-only file (``everysec``) and no ``requirepass``; every component is
connected as its own user and nobody as ``default``; a node agent's real credentials are
refused the tokens, the moves and the state keys; a workload's environment holds no
control-plane credential (no Redis URL, no env file, no password); a Redis crash in the middle
of the stack's life keeps the services, a finished move and a move in flight with its lock
(which then ends, releasing the lock), and after a crash that lost the VNI and link-block
counters' last increments a new link gets a VNI and addresses no live link (in the registry or
on any node) has, and carries traffic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest
import redis

from cli.stack import Stack
from dataplane.lab import topology
from mobility import keys
from mobility.store import Registry, acl
from tests.integration.test_moves import Pair, release_pause, wait_event, wait_terminal

NOPERM = redis.exceptions.NoPermissionError


def passwords(stack: Stack) -> dict[str, str]:
    d = stack.run_dir / "redis" / "passwords"
    return {p.name: p.read_text().strip() for p in d.iterdir() if not p.name.startswith(".")}


def proc_read(pid: int, what: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as fh:
            return fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return b""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them."""
    parent = {}
    for pid in all_pids():
        stat = proc_read(pid, "stat")
        if stat:
            parent[pid] = int(stat.rsplit(b")", 1)[1].split()[1])
    out = set(roots)
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in out and p not in out}
        out |= more
        grew = bool(more)
    return out


def stack_pids(stack: Stack) -> set[int]:
    roles = [p.stem for p in (stack.run_dir / "pids").glob("*.json")]
    roots = {pid for r in roles if (pid := topology.recorded_pid(stack.run_dir, r))}
    assert {"redis", "api", "orchestrator", "beat"} <= set(roles), roles
    return descendants(roots)


def test_no_password_in_any_command_line_or_stack_environment(lab_stack: Stack) -> None:
    secrets_ = passwords(lab_stack)
    assert {acl.ADMIN, acl.API, acl.ORCHESTRATOR, acl.BEAT} <= set(secrets_)
    for pid in all_pids():
        cmdline = proc_read(pid, "cmdline")
        for user, pw in secrets_.items():
            assert pw.encode() not in cmdline, f"pid {pid} has {user}'s password: {cmdline!r}"
    # what the stack ran: the argv and environment it recorded for each process (the
    # supervisor restarts from them). Redis rewrites its own process title, so a password on
    # its command line would show in /proc only while it starts: the recorded argv shows it.
    specs = list((lab_stack.run_dir / "specs").glob("*.json"))
    for spec in specs:
        recorded = spec.read_text()
        for user, pw in secrets_.items():
            assert pw not in recorded, f"{spec.name} holds {user}'s password"
    ours = stack_pids(lab_stack)
    assert len(ours) > 6
    for pid in ours:
        environ = proc_read(pid, "environ")
        for user, pw in secrets_.items():
            assert pw.encode() not in environ, f"pid {pid} has {user}'s password in its env"
    # what the stack writes is 0600 in a 0700 directory (which also hides Redis's own files)
    redis_dir = lab_stack.run_dir / "redis"
    assert redis_dir.stat().st_mode & 0o777 == 0o700
    written = [*redis_dir.glob("passwords/*"), *redis_dir.glob("*.env"),
               *(redis_dir / n for n in ("redis.conf", "users.acl", "default.digest",
                                         "credentials.key"))]
    assert len(written) > 8
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in (redis_dir / "redis.conf", redis_dir / "users.acl"):
        text = path.read_text()
        assert not any(pw in text for pw in secrets_.values()), path


def test_redis_persists_and_every_component_has_its_own_user(api: httpx.Client,
                                                            lab_stack: Stack) -> None:
    assert api.get("/v1/services").status_code == 200  # the API connects on its first request
    r = redis.Redis.from_url(lab_stack.redis_url())
    try:
        config = r.config_get("*")
        assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
        assert config["requirepass"] == ""
        users = {c["user"] for c in r.client_list()}
        agents = {acl.agent_user(n.cluster, n.name) for n in lab_stack.plan.nodes}
        assert {acl.API, acl.ORCHESTRATOR, acl.BEAT, *agents} <= users, users
        assert "default" not in users
        for pw in passwords(lab_stack).values():  # nobody logs in as default
            with pytest.raises(redis.exceptions.AuthenticationError):
                r.execute_command("AUTH", "default", pw)  # type: ignore[no-untyped-call]
    finally:
        r.close()


def test_a_node_agents_credentials_are_refused_outside_its_job(lab_stack: Stack) -> None:
    n = lab_stack.plan.nodes[0]
    user = acl.agent_user(n.cluster, n.name)
    r = redis.Redis.from_url(lab_stack.redis_url(user=user))
    try:
        assert r.smembers(keys.SERVICES) is not None  # the registry it reconciles from
        for attempt in (lambda: r.smembers(keys.TOKENS), lambda: r.zrange(keys.MOVES, 0, -1),
                        lambda: r.xread({keys.state_frames("mv-20260101000000-abcdef"): "0"}),
                        lambda: r.get(keys.state_acked("mv-20260101000000-abcdef")),
                        lambda: r.lpush("orchestration", b"x"),
                        lambda: r.config_get("*")):
            with pytest.raises(NOPERM):
                attempt()
    finally:
        r.close()
    admin = redis.Redis.from_url(lab_stack.redis_url())
    try:
        admin.acl_log_reset()  # the refusals above were ours
    finally:
        admin.close()


def test_a_workload_gets_no_control_plane_credential(api: httpx.Client,
                                                     lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "env")
    try:
        pod = pair.service()["instance"]["pod"]
        meta = json.loads((lab_stack.run_dir / "pods" / pod / "meta.json").read_text())
        environ = proc_read(int(meta["pid"]), "environ")
        assert environ, "the workload runs"
        names = {v.split(b"=", 1)[0].decode() for v in environ.split(b"\0") if v}
        assert "PATH" in names
        leaked = {n for n in names if n.startswith("MOBILITY_")} - {
            "MOBILITY_FAULT_INJECTION", "MOBILITY_LOG_LEVEL"}
        assert leaked == set(), leaked
        assert b"redis://" not in environ
        for pw in passwords(lab_stack).values():
            assert pw.encode() not in environ
    finally:
        pair.finish()


def live_vnis(stack: Stack) -> dict[int, str]:
    """VNI -> namespace of every VxLAN device in the lab's namespaces (the live links)."""
    out = {}
    for ns in topology.namespaces_left(stack.plan.name):
        res = subprocess.run(["ip", "-n", ns, "-d", "-j", "link", "show", "type", "vxlan"],
                             capture_output=True, text=True, timeout=10, check=False)
        for dev in json.loads(res.stdout or "[]"):
            out[int(dev["linkinfo"]["info_data"]["id"])] = ns
    return out


def wait_redis(stack: Stack, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = redis.Redis.from_url(stack.redis_url(), socket_timeout=1)
        try:
            if r.ping():
                return
        except redis.RedisError:
            pass
        finally:
            r.close()
        assert time.monotonic() < deadline, "redis did not come back"
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_a_redis_crash_keeps_the_registry_locks_moves_and_unique_identities(
        api: httpx.Client, lab_stack: Stack) -> None:
    pair = Pair(api, lab_stack, "aof")
    extra: list[str] = []
    try:
        reg = Registry.from_url(lab_stack.redis_url())
        echo = reg.get_service(pair.echo)
        assert echo is not None
        link = reg.get_link(echo.links[0])
        done = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "edge"}).json()
        assert wait_terminal(api, done["id"])["status"] == "succeeded"
        held = api.post("/v1/moves", json={"service": pair.echo, "to_cluster": "core",
                                           "faults": ["pause:sync"]}).json()
        wait_event(api, held["id"], "fault_paused", "sync")
        assert reg.lock_owner(pair.echo) == held["id"]
        # the last increments lost: the counters went back to just before this pair's link
        blocks = {int(e.mac.split(":")[4], 16) for e in link.ends}
        reg.r.set(keys.VNI_SEQ, link.vni - 1000 - 1)
        reg.r.set(keys.LINK_BLOCK_SEQ, min(blocks) - 1)
        time.sleep(1.5)  # everysec: on disk now, as a crash that lost them would leave them
        pid = topology.recorded_pid(lab_stack.run_dir, "redis")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        reg.r.close()
        deadline = time.monotonic() + 5
        while topology.recorded_pid(lab_stack.run_dir, "redis") in (None, pid):
            if time.monotonic() > deadline:
                lab_stack.ensure_redis()  # no supervisor brought it back: the stack does
                break
            time.sleep(0.1)
        wait_redis(lab_stack)

        reg = Registry.from_url(lab_stack.redis_url())
        assert reg.get_service(pair.echo) is not None and reg.get_service(pair.client)
        assert reg.get_link(link.id) == link
        assert str(reg.get_move(done["id"]).status) == "succeeded"
        assert reg.events(done["id"]), "the finished move's events survive"
        in_flight = reg.get_move(held["id"])
        assert not in_flight.status.terminal and str(in_flight.phase) == "sync"
        assert reg.lock_owner(pair.echo) == held["id"], "the lock survives"

        # The move ends: its held phase goes on when released or, when its worker did not
        # survive the crash, the reaper takes it over once its lease runs out (and beat has
        # taken over the lock its predecessor left in Redis: redbeat_lock_timeout).
        release_pause(lab_stack, held["id"])
        assert wait_terminal(api, held["id"], timeout=150)["status"] in ("succeeded",
                                                                         "rolled_back")
        assert reg.lock_owner(pair.echo) is None

        used = {reg.get_link(i).vni for s in reg.services().values() for i in s.links}
        live = live_vnis(lab_stack)
        assert link.vni in used and link.vni in live
        addresses = {e.ip for s in reg.services().values() for i in s.links
                     for e in reg.get_link(i).ends}
        extra.append(f"extra-{pair.echo.removeprefix('echo-')}")
        r = api.post("/v1/services", json={"name": extra[0], "workload": "probe",
                                           "cluster": "core", "peers": [pair.echo],
                                           "params": {"rate": 200}})
        assert r.status_code == 201, r.text
        new = reg.get_link(f"{extra[0]}.{pair.echo}")
        assert new.vni not in used and new.vni not in live, (new.vni, sorted(live))
        assert not {e.ip for e in new.ends} & addresses
        progress = (lab_stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io"
                    / "progress.json")
        deadline = time.monotonic() + 15
        while not (progress.exists() and json.loads(progress.read_text() or "{}")
                   .get("received", 0) > 50):
            assert time.monotonic() < deadline, "the new link carries no traffic"
            time.sleep(0.1)
        reg.r.close()
    finally:
        for name in extra:
            api.delete(f"/v1/services/{name}")
        pair.finish()
