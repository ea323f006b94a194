"""The Redis ACL rules (mobility.store.acl) and the identity helpers, without a server.

Aspects: every key mobility.keys builds falls in a key family, and every family (but the
bench's) is granted to some component, so a new key cannot go ungranted unnoticed; a move's
state pattern covers exactly that move's state keys; what each component is given, read-only
or not (the agents no state, token, credential or move key and only their own queue; the
orchestrator may expire state keys but never read them; beat only redbeat; the per-move user
only its move's keys and the state channel's commands); user names refuse glob characters; an
ACL file holds digests, never a password, and a ``default`` user behind a digest that is nobody's
password (on, with every permission: Redis replays transactions as it); URLs for a user keep
host, port and database; link blocks and pod numbers read back from what the allocators made.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterator

import pytest

from mobility import keys
from mobility.deploying import link_identity
from mobility.errors import Invalid
from mobility.store import acl
from mobility.store.identities import block_of, pod_number
from workers.routing import ORCHESTRATION, node_queue

CELERY_NAMES = ("CELERY_", "KOMBU_")
NOT_PROJECT_KEYS = {"queue_keys", "pidbox_queue", "state_keys", "state_pattern"}


def project_keys() -> Iterator[tuple[str, str]]:
    """(name, key) for every constant and key function of mobility.keys (sample arguments)."""
    for name, value in vars(keys).items():
        if name.startswith("_") or name.startswith(CELERY_NAMES) or name in NOT_PROJECT_KEYS:
            continue
        if isinstance(value, str) and value.startswith(keys.PREFIX) and name != "PREFIX":
            yield name, value
        elif inspect.isfunction(value):
            params = inspect.signature(value).parameters
            made = value(*[f"x{i}" for i in range(len(params))])
            if isinstance(made, str):
                yield name, made


def family_of(key: str) -> str | None:
    for family, patterns in acl.FAMILIES.items():
        if any(fnmatch.fnmatchcase(key, p) for p in patterns):
            return family
    return None


def users() -> dict[str, list[str]]:
    return acl.component_users(
        orchestration=ORCHESTRATION, node_queues=node_queue("*", "*"),
        agents={acl.agent_user("core", "n1"): acl.CeleryRole(
            consumes=(node_queue("core", "n1"),), worker="agent-core-n1@lab")})


def key_rules(rules: list[str]) -> dict[str, str]:
    """pattern -> "R", "W" or "RW", from a user's rules."""
    out = {}
    for r in rules:
        for prefix, mode in (("%R~", "R"), ("%W~", "W"), ("~", "RW")):
            if r.startswith(prefix):
                out[r[len(prefix):]] = mode
                break
    return out


def test_every_key_is_in_a_family() -> None:
    made = dict(project_keys())
    assert "service" in made and "VNI_SEQ" in made and "IDENTITY_RUN" in made
    stray = {name: key for name, key in made.items() if family_of(key) is None}
    assert stray == {}, f"keys no ACL family covers (add them to acl.FAMILIES): {stray}"
    for move in ("mv-1", "mv-20261201-abcdef"):
        for key in keys.state_keys(move):
            assert family_of(key) == "state"


def test_every_family_is_granted_to_a_component() -> None:
    granted = {f for access in acl.ACCESS.values() for f in access}
    assert set(acl.FAMILIES) - granted == {"bench"}  # bench/state.py runs as the admin


def test_a_moves_state_pattern_is_exactly_its_keys() -> None:
    pattern = keys.state_pattern("mv-a")
    assert all(fnmatch.fnmatchcase(k, pattern) for k in keys.state_keys("mv-a"))
    assert not any(fnmatch.fnmatchcase(k, pattern) for k in keys.state_keys("mv-ab"))
    assert not fnmatch.fnmatchcase(keys.service("mv-a"), pattern)
    assert acl.move_rules("mv-a")[-2:] == [f"~{pattern}", "resetchannels"]


@pytest.mark.parametrize("name", ["mv-*", "a?b", "x[1]", "a b", "", "a\nb", "-lead"])
def test_names_with_glob_or_space_make_no_user(name: str) -> None:
    with pytest.raises(Invalid):
        acl.move_user(name)
    with pytest.raises(Invalid):
        acl.agent_user("core", name)


def test_agents_get_their_queue_and_no_secret() -> None:
    rules = users()[acl.agent_user("core", "n1")]
    granted = key_rules(rules)
    for key in (keys.state_frames("mv-1"), keys.token("t1"), keys.TOKENS, keys.credentials("c"),
                keys.move("mv-1"), keys.MOVES, keys.operation("o"), keys.VNI_SEQ,
                node_queue("core", "n2"), node_queue("core", "n10"), ORCHESTRATION,
                keys.BENCH_VALUE):
        assert not any(fnmatch.fnmatchcase(key, p) for p in granted), key
    assert granted[keys.service("*")] == "R" and granted[keys.link("*")] == "R"
    assert granted[keys.service_health("*")] == "RW"
    assert granted[node_queue("core", "n1")] == "RW"
    # remote control: subscribed by a selector, never published (no root channel for it)
    pidbox = keys.KOMBU_FANOUT_PREFIX.format(db=0) + keys.CELERY_PIDBOX
    assert f"&{pidbox}" not in rules and f"(+psubscribe &{pidbox})" in rules
    assert "-psubscribe" in rules


def test_the_orchestrator_expires_state_but_never_reads_it() -> None:
    granted = key_rules(users()[acl.ORCHESTRATOR])
    assert granted[keys.state_pattern("*")] == "W"
    assert not any(fnmatch.fnmatchcase(keys.token("t"), p) for p in granted)
    assert "+acl|setuser" in users()[acl.ORCHESTRATOR]
    assert not any("+acl" in r for u, rs in users().items() if u != acl.ORCHESTRATOR
                   and u != acl.ADMIN for r in rs)


def test_beat_and_the_shared_state_user_get_only_theirs() -> None:
    beat = key_rules(users()[acl.BEAT])
    project = {p for p in beat if p.startswith(keys.PREFIX)}
    assert project == {f"{keys.REDBEAT_PREFIX}*"}
    state = users()[acl.STATE]
    assert key_rules(state) == {keys.state_pattern("*"): "RW"}
    assert "+@all" not in state and "+set" not in state


def test_the_per_move_user_runs_only_the_channels_commands() -> None:
    rules = acl.move_rules("mv-1")
    commands = {r for r in rules if r[:1] in "+-"}
    assert commands == {"-@all", "+ping", "+hello", "+auth", "+client|setname", "+reset",
                        "+quit", "+get", "+incrby", "+expire", "+xadd", "+xread", "+xdel"}
    assert [r for r in rules if "~" in r] == [f"~{keys.state_pattern('mv-1')}"]


def test_every_component_is_refused_administration() -> None:
    for user, rules in users().items():
        if user == acl.ADMIN:
            assert rules == ["~*", "&*", "+@all"]
            continue
        assert rules[0] == "-@all", user
        assert "+@all" not in rules and "+@admin" not in rules and "+@dangerous" not in rules
        if user != acl.STATE:
            assert {"-@admin", "-@dangerous", "-function", "-scan"} <= set(rules), user


def test_an_acl_file_holds_digests_only() -> None:
    made = users()
    passwords = {u: f"pw-{u}-secret" for u in made}
    locked = acl.locked_digest()
    text = acl.acl_file(made, passwords, default_digest=locked)
    lines = text.splitlines()
    # the default user: on and allowed everything (Redis replays the append-only file's
    # transactions as it), behind a digest that is no user's password
    assert lines[0] == f"user default on #{locked} ~* &* +@all"
    assert locked != acl.locked_digest()
    assert len(lines) == 1 + len(made)
    for user, password in passwords.items():
        assert password not in text
        assert f"#{acl.digest(password)}" in text, user
    with pytest.raises(Invalid):
        acl.acl_file({"x": ["~a b"]}, {"x": "p"}, default_digest=locked)
    with pytest.raises(Invalid):
        acl.acl_file({"x": ["~a"]}, {"x": "p"}, default_digest=acl.digest("p"))


def test_urls_for_a_user_keep_host_port_and_database() -> None:
    url = acl.with_credentials("redis://:old@198.18.255.253:6391/0", "mob-move-mv-1", "p/w:@")
    assert url == "redis://mob-move-mv-1:p%2Fw%3A%40@198.18.255.253:6391/0"
    assert acl.with_credentials("redis://h/2", "u", "p") == "redis://u:p@h/2"


@pytest.mark.parametrize("block", [1, 2, 255, 256, 4097, 16_256])
def test_link_blocks_read_back_from_their_macs(block: int) -> None:
    (mac_a, _), (mac_b, _) = link_identity(block)
    assert block_of(mac_a) == block_of(mac_b) == block


def test_pod_numbers_read_back() -> None:
    assert pod_number("echo-12") == 12
    assert pod_number("client-a-3") == 3
    assert pod_number("nonumber") == 0
    assert block_of("aa:bb:cc:dd:ee:ff") == 0
