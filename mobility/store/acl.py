"""Redis ACL users: one per component, each allowed the least it needs, and one per move.

Who may do what (the key families are :data:`FAMILIES`, built from :mod:`mobility.keys`):

- **api** (``mob-api``): reads the registry; writes what a request records (moves and their
  locks, policies, rebalancing, signals, tokens and their rate windows, operations, sealed
  credentials, the rebalancing cron in redbeat); sends tasks to the orchestration queue and
  waits for nothing but their results. No link, sequence, health or state key is its to write.
  It writes move subscriptions' sealed secrets but may not read them back (the orchestrator,
  which signs the deliveries, reads them). For ``GET /metrics`` it reads the aggregates
  (``mob:metrics:*``, written by the others) and the node queues' lengths, never their tasks.
- **orchestrator** (``mob-orchestrator``): the engine. Reads and writes the registry (not the
  tokens), allocates identities (``INFO`` tells it when Redis restarted), consumes the
  orchestration queue, sends node operations to the node queues and waits for their answers.
  It may *expire* a move's state keys, never read them (the orchestrator never holds state),
  and it creates and deletes the per-move users (``ACL SETUSER``/``DELUSER``): that makes it
  the trust root of the state channel, as it is of moves (Redis cannot limit what a user given
  ``ACL SETUSER`` may grant, so no other component has it).
- **node agents** (``mob-agent-<cluster>-<node>``, one per node): consume their own node's
  queue and no other; read clusters, services, links and locks (the reconciler) and their own
  node's index (``keys.node_services``: the services placed on it); write their path health,
  reconcile counter and repair counts (``GET /metrics``); answer through Celery's results.
  No move, token, credential or state key; they cannot send work to the orchestrator.
- **beat** (``mob-beat``): redbeat's keys, and sending its ticks to the orchestration queue.
- **a move's state agents** (``mob-move-<move>``, :class:`StateUsers`): only
  ``mob:state:<move>:*``, only the commands the state channel uses. The engine makes it before
  SYNC and hands its URL to the two state agents over their control sockets only; it is deleted
  when the move ends (``ACL DELUSER`` also closes its connections).
- **state** (``mob-state``): every move's state keys and nothing else; what the state agents get
  while the engine does not make per-move users (``MOBILITY_STATE_REDIS_URL``).
- **admin** (``mob-admin``): everything, for the stack's own tools (CLI, tests, benches); no
  component runs with it.
- **default**: a client that does not say who it is can do nothing: the ``default`` user's only
  password is one nobody has (the digest of random bytes thrown away). It is not turned
  *off*, and keeps every permission, because Redis 7.0 replays the append-only file's
  transactions (``MULTI``/``EXEC``, and every script's effects) as the default user and checks
  its permissions again at ``EXEC``: with the default user off or restricted, every
  transaction would be dropped, silently, at each restart (redis/redis#14541, fixed in later
  releases by #14545).

Celery's keys (``mobility.keys.CELERY_*``, ``KOMBU_*``): every consumer shares kombu's
``unacked`` hash (kombu names it once per broker, not per queue), so a consumer can see the
messages in flight to the others; messages carry no secret (credentials go by reference).
Remote control (``celery.pidbox``) is received, never sent: a selector lets a worker's user
subscribe to the broadcast channel without being able to publish on it, so no component can
shut the others down or revoke their tasks.

Rules are plain strings (``ACL SETUSER`` arguments, or an ACL file's lines). Redis is given a
password's SHA-256 only (``#<hex>``), so no file Redis reads holds a password.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from mobility import keys
from mobility.errors import Invalid

ADMIN = "mob-admin"
API = "mob-api"
ORCHESTRATOR = "mob-orchestrator"
BEAT = "mob-beat"
STATE = "mob-state"
AGENT_PREFIX = "mob-agent-"
MOVE_PREFIX = "mob-move-"

# A name that goes into a user name or a key pattern: no glob character, no space.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def agent_user(cluster: str, node: str) -> str:
    """The Redis user of one node's agent."""
    return f"{AGENT_PREFIX}{_checked(cluster)}-{_checked(node)}"


def move_user(move_id: str) -> str:
    """The Redis user of one move's state agents."""
    return f"{MOVE_PREFIX}{_checked(move_id)}"


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise Invalid(f"{name!r} cannot name a Redis user: letters, digits, '_', '.', '-' only")
    return name


# Every family of the project's keys (a glob each), from mobility.keys: an ACL grants families.
FAMILIES: dict[str, tuple[str, ...]] = {
    "clusters": (keys.CLUSTERS, keys.cluster("*")),
    "services": (keys.SERVICES, keys.service("*")),
    "links": (keys.link("*"),),
    "locks": (keys.service_lock("*"),),
    "moves": (keys.MOVES, keys.ACTIVE_MOVES, keys.move("*")),  # move("*"): the events too
    "leases": (keys.move_lease("*"),),
    "last_moves": (keys.last_move("*"),),
    "faults": (keys.fault_release("*"), keys.fault_fired("*", "*")),
    "sequences": (keys.VNI_SEQ, keys.LINK_BLOCK_SEQ, keys.POD_SEQ, keys.IDENTITY_RUN),
    "chains": (keys.CHAINS, keys.chain("*")),
    "signals": (keys.SIGNALS, f"{keys.SIGNAL_PREFIX}*", f"{keys.SIGNAL_OWNERS_PREFIX}*"),
    "policies": (keys.POLICIES, keys.policy("*")),
    "policy_ticks": (keys.POLICY_TICKS,),
    "rebalance_config": (keys.REBALANCE_CONFIG,),
    "rebalance_last": (keys.REBALANCE_LAST,),
    "redbeat": (f"{keys.REDBEAT_PREFIX}*",),
    "tokens": (keys.TOKENS, keys.token("*"), keys.rate("*", "*")),
    "operations": (keys.operation("*"),),
    "jobs": (keys.JOBS, keys.job("*", "*"), keys.job_lease("*", "*")),
    "credentials": (keys.credentials("*"),),
    "images": (keys.IMAGES,),
    "health": (keys.service_health("*"),),
    "reconcile": (keys.reconcile_passes("*"),),
    "state": (keys.state_pattern("*"),),
    "bench": (keys.BENCH_VALUE,),  # bench/state.py's baseline: the admin's alone
    "subscriptions": (keys.SUBSCRIPTIONS, keys.subscription("*")),
    "subscription_secrets": (keys.subscription_secret("*"),),  # the API writes, never reads
    "deliveries": (keys.subscription_deliveries("*"),),
    "notifications": (keys.subscription_progress("*", "*"), keys.notification("*")),
    # GET /metrics's aggregates: moves' ends (the orchestrator), repairs (the agents), probes
    "metrics": (keys.METRICS_MOVES, keys.METRICS_PHASE_MS, keys.METRICS_FREEZE_MS,
                keys.METRICS_TOTALS, keys.METRICS_PROBES, keys.METRICS_PROBED),
    "repairs": (keys.METRICS_REPAIRS,),
    # every node's index; an agent reads its own node's alone (``_agent_index_rules``)
    "node_index": (keys.NODE_INDEX_BUILT, keys.node_services("*", "*")),
}

Access = Literal["R", "W", "RW"]
R: Access = "R"
W: Access = "W"
RW: Access = "RW"

# Which families each component reads (R), writes without reading (W) or both (RW).
ACCESS: dict[str, dict[str, Access]] = {
    # services: RW because the create-move script declares the service's key (Redis asks for
    # read and write on every key a script declares); the API only checks that it exists.
    API: {"clusters": R, "services": RW, "links": R, "locks": RW, "moves": RW, "leases": R,
          "last_moves": RW, "faults": RW, "chains": R, "signals": RW, "policies": RW,
          "policy_ticks": R, "rebalance_config": RW, "rebalance_last": R, "redbeat": RW,
          "tokens": RW, "operations": RW, "jobs": R, "credentials": RW, "health": R,
          "reconcile": R, "images": R, "subscriptions": RW, "subscription_secrets": W,
          "deliveries": RW, "metrics": R, "repairs": R, "node_index": R},
    ORCHESTRATOR: {"clusters": RW, "services": RW, "links": RW, "locks": RW, "moves": RW,
                   "leases": RW, "last_moves": RW, "faults": RW, "sequences": RW, "chains": RW,
                   "signals": RW, "policies": RW, "policy_ticks": RW, "rebalance_config": R,
                   "rebalance_last": RW, "operations": RW, "jobs": RW, "credentials": RW,
                   "health": R, "images": RW,
                   "reconcile": R, "state": W, "subscriptions": R, "subscription_secrets": R,
                   "deliveries": RW, "notifications": RW, "metrics": RW, "repairs": R,
                   "node_index": RW},
    BEAT: {"redbeat": RW},
    AGENT_PREFIX: {"clusters": R, "services": R, "links": R, "locks": R, "health": RW,
                   "reconcile": RW, "repairs": RW},
    STATE: {"state": RW},
}

_KEY_RULE: dict[Access, str] = {"R": "%R~", "W": "%W~", "RW": "~"}

# What every component may run: data commands on its keys, transactions, scripts (whose
# commands Redis checks against the same rules), pub/sub on its channels. Nothing that
# administers the server, lists or flushes the keyspace, or changes another client.
_COMMANDS = (
    "-@all", "+@string", "+@list", "+@hash", "+@set", "+@sortedset", "+@stream", "+@keyspace",
    "+@transaction", "+@scripting", "+@pubsub",
    "-@admin", "-@dangerous", "-function", "-script|flush", "-script|kill", "-script|debug",
    "-scan", "-randomkey", "-move", "-psubscribe",
    "+ping", "+echo", "+hello", "+auth", "+client|setname", "+client|getname", "+client|id",
    "+reset", "+quit", "+time",
)
_EXTRA_COMMANDS: dict[str, tuple[str, ...]] = {
    # restarts (identities), and the per-move users
    ORCHESTRATOR: ("+info", "+acl|setuser", "+acl|deluser", "+acl|users"),
}
# What a move's state agents run (state_transfer.channel, .resp): nothing else.
_STATE_COMMANDS = (
    "-@all", "+ping", "+hello", "+auth", "+client|setname", "+reset", "+quit",
    "+get", "+incrby", "+expire", "+xadd", "+xread", "+xdel",
)


@dataclass(frozen=True)
class CeleryRole:
    """What a component does through Celery: the queues it consumes and sends to (names or
    globs, from ``workers.routing``), and its workers' node names (``-n``, a glob)."""

    consumes: tuple[str, ...] = ()
    sends_to: tuple[str, ...] = ()
    worker: str = "*"
    measures: tuple[str, ...] = ()  # queues whose length it reads, and nothing else (metrics)


def _celery_rules(role: CeleryRole, *, db: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Key rules, channel rules and selectors for ``role``."""
    fanout = keys.KOMBU_FANOUT_PREFIX.format(db=db)
    rules = []
    for queue in (*role.consumes, *role.sends_to):
        rules += [f"~{k}" for k in keys.queue_keys(queue)]
        rules += [f"~{keys.KOMBU_BINDING_PREFIX}{queue}",
                  f"~{keys.KOMBU_BINDING_PERMANENT_PREFIX}{queue}"]
    rules += [f"%R~{queue}" for queue in role.measures]
    rules.append(f"~{keys.CELERY_RESULT_PREFIX}*")
    channels = [f"&{keys.CELERY_RESULT_PREFIX}*"]
    if role.sends_to and not role.consumes:  # a sender's "task-sent" events (Flower's view)
        channels.append(f"&{fanout}{keys.CELERY_EVENTS}/*")
    selectors = []
    if role.consumes:
        rules += [f"~{k}" for k in keys.KOMBU_UNACKED]
        rules += [f"~{keys.KOMBU_BINDING_DEADLINES}",
                  f"~{keys.KOMBU_BINDING_PREFIX}{keys.CELERY_PIDBOX}",
                  f"~{keys.KOMBU_BINDING_PERMANENT_PREFIX}{keys.CELERY_PIDBOX}"]
        rules += [f"~{k}" for k in keys.queue_keys(keys.pidbox_queue(role.worker))]
        # answering remote control (``celery inspect``, from the admin)
        rules.append(f"%R~{keys.KOMBU_BINDING_PREFIX}{keys.CELERY_PIDBOX_REPLY}")
        rules += [f"~{k}" for k in keys.queue_keys(f"*.{keys.CELERY_PIDBOX_REPLY}")]
        channels.append(f"&{fanout}{keys.CELERY_EVENTS}/*")  # worker heartbeats
        # receive remote control, never send it
        selectors.append(f"(+psubscribe &{fanout}{keys.CELERY_PIDBOX})")
    return rules, channels, selectors


def rules(user: str, *, celery: CeleryRole | None = None) -> list[str]:
    """The ACL rules of a component's user (without its password): commands, keys, channels."""
    if user == ADMIN:
        return ["~*", "&*", "+@all"]
    kind = AGENT_PREFIX if user.startswith(AGENT_PREFIX) else user
    if kind not in ACCESS:
        raise Invalid(f"no ACL is defined for Redis user {user!r}")
    commands = list(_STATE_COMMANDS if kind == STATE else _COMMANDS)
    commands += _EXTRA_COMMANDS.get(kind, ())
    key_rules = [f"{_KEY_RULE[mode]}{pattern}" for family, mode in ACCESS[kind].items()
                 for pattern in FAMILIES[family]]
    if kind == AGENT_PREFIX:
        key_rules += _agent_index_rules(user)
    channels: list[str] = []
    selectors: list[str] = []
    if celery is not None:
        more, channels, selectors = _celery_rules(celery)
        key_rules += more
    return [*commands, "resetkeys", *key_rules, "resetchannels", *channels, *selectors]


def _agent_index_rules(user: str) -> list[str]:
    """An agent reads its own node's index (and whether the index is built), no other's.

    Its user name joins cluster and node with "-", which names may hold too, so each way of
    splitting it back names a node that would get this very user: the agent may read those
    nodes' indexes (all of them its own user's), never one another user's node has.
    """
    suffix = user.removeprefix(AGENT_PREFIX)
    splits = [(suffix[:i], suffix[i + 1:]) for i, ch in enumerate(suffix) if ch == "-"]
    return [f"%R~{keys.NODE_INDEX_BUILT}",
            *(f"%R~{keys.node_services(c, n)}" for c, n in splits
              if _NAME.fullmatch(c) and _NAME.fullmatch(n))]


def move_rules(move_id: str) -> list[str]:
    """A move's state agents: that move's state keys, the state channel's commands."""
    return [*_STATE_COMMANDS, "resetkeys", f"~{keys.state_pattern(_checked(move_id))}",
            "resetchannels"]


def component_users(*, orchestration: str, node_queues: str,
                    agents: Mapping[str, CeleryRole], orchestrator_worker: str = "*",
                    ) -> dict[str, list[str]]:
    """Every component's user and rules. ``node_queues``: a glob of every node's queue (the
    orchestrator sends to them); ``agents``: each node agent's user and its Celery role."""
    users = {
        ADMIN: rules(ADMIN),
        API: rules(API, celery=CeleryRole(sends_to=(orchestration,),
                                          measures=(node_queues,))),
        ORCHESTRATOR: rules(ORCHESTRATOR, celery=CeleryRole(
            consumes=(orchestration,), sends_to=(node_queues,), worker=orchestrator_worker)),
        BEAT: rules(BEAT, celery=CeleryRole(sends_to=(orchestration,))),
        STATE: rules(STATE),
    }
    for user, role in agents.items():
        if not user.startswith(AGENT_PREFIX):
            raise Invalid(f"{user!r} is not a node agent's user ({AGENT_PREFIX}...)")
        users[user] = rules(user, celery=role)
    return users


def digest(password: str) -> str:
    """What Redis keeps of a password: its SHA-256, in hex."""
    return hashlib.sha256(password.encode()).hexdigest()


def _file_arg(arg: str) -> str:
    """One rule as an ACL file holds it. Redis splits a line at spaces and knows no quoting
    (a selector's spaces it joins again), so a rule is written as it is, control characters
    (kombu's priority separator) included; a space outside a selector, or a line break, is
    refused."""
    if "\n" in arg or "\r" in arg or (" " in arg and not arg.startswith("(")):
        raise Invalid(f"ACL rule {arg!r} cannot be written to an ACL file")
    return arg


def locked_digest() -> str:
    """A password digest no password has (of random bytes, thrown away): the default user's."""
    return hashlib.sha256(secrets.token_bytes(32)).hexdigest()


def acl_file(users: Mapping[str, Sequence[str]], passwords: Mapping[str, str], *,
             default_digest: str) -> str:
    """An ACL file (``aclfile``) with each user's digest only, and the ``default`` user behind
    ``default_digest`` (:func:`locked_digest`; see the module's doc for why it stays on)."""
    if not re.fullmatch(r"[0-9a-f]{64}", default_digest) or default_digest in {
            digest(p) for p in passwords.values()}:
        raise Invalid("the default user needs a digest of its own, no user's password")
    lines = [f"user default on #{default_digest} ~* &* +@all"]
    for user, user_rules in users.items():
        args = ["on", f"#{digest(passwords[user])}", *user_rules]
        lines.append(" ".join(["user", user, *(_file_arg(a) for a in args)]))
    return "\n".join(lines) + "\n"


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` (a redis:// URL) for ``user``: the same host, port and database."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme or "redis", netloc, parts.path or "/0", parts.query, ""))


class StateUsers:
    """The per-move users of the state agents, made and removed by the engine.

    :meth:`open` before handing the agents a Redis URL (``Engine._agents``); :meth:`close`
    when the move ends (with ``expire_state``); :meth:`prune` (the reaper) removes those of
    moves that ended without it. A user lives only in the server's memory: after a Redis
    restart it is gone, and a move then in SYNC or CUTOVER fails and rolls back.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def open(self, move_id: str, *, via: str) -> str:
        """Make the move's user, or give it one more password (sessions already open keep
        theirs: a phase retried on another worker opens again); its URL on ``via``'s host."""
        user = move_user(move_id)
        password = secrets.token_urlsafe(24)
        self.r.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", user, "on", f"#{digest(password)}", *move_rules(move_id))
        return with_credentials(via, user, password)

    def close(self, move_id: str) -> bool:
        """Delete the move's user (and close its connections); False when there was none."""
        return bool(self.r.acl_deluser(move_user(move_id)))

    def users(self) -> list[str]:
        """The moves that have a user now."""
        names: list[bytes | str] = self.r.acl_users()
        out = []
        for n in names:
            name = n.decode() if isinstance(n, bytes) else n
            if name.startswith(MOVE_PREFIX):
                out.append(name.removeprefix(MOVE_PREFIX))
        return sorted(out)

    def prune(self, *, keep: Iterable[str]) -> list[str]:
        """Delete the users of every move not in ``keep`` (the active ones); returns them."""
        kept = set(keep)
        gone = [m for m in self.users() if m not in kept]
        for move_id in gone:
            self.close(move_id)
        return gone
