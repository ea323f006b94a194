"""Every Redis key the project uses. No key string is built anywhere else.

The state channel's keys are the SDK's own (:mod:`state_transfer.keys`, which must not import
the orchestrator); they are re-exported here so this module still lists every key.
"""

from __future__ import annotations

from state_transfer.keys import state_acked as state_acked
from state_transfer.keys import state_frames as state_frames
from state_transfer.keys import state_keys as state_keys

PREFIX = "mob:"

CLUSTERS = f"{PREFIX}clusters"  # set of cluster names
SERVICES = f"{PREFIX}services"  # set of service names
MOVES = f"{PREFIX}moves"  # zset: move id by creation time
ACTIVE_MOVES = f"{PREFIX}moves:active"  # set of move ids not yet terminal
VNI_SEQ = f"{PREFIX}seq:vni"
LINK_BLOCK_SEQ = f"{PREFIX}seq:linkblock"
POD_SEQ = f"{PREFIX}seq:pod"
CHAINS = f"{PREFIX}chains"  # set of chain names
SIGNALS = f"{PREFIX}signals"  # set of the series keys holding samples
POLICIES = f"{PREFIX}policies"  # set of policy ids
POLICY_TICKS = f"{PREFIX}policies:ticks"  # how many policy ticks have run (a counter)
REBALANCE_CONFIG = f"{PREFIX}rebalance:config"
REBALANCE_LAST = f"{PREFIX}rebalance:last"  # the last plan the scheduled rebalancer ran
REDBEAT_PREFIX = f"{PREFIX}redbeat:"  # celery-redbeat's own keys start with this
TOKENS = f"{PREFIX}tokens"  # set of API token ids
IMAGES = f"{PREFIX}images"  # hash: image name -> its catalogue record (msgpack)
BENCH_VALUE = f"{PREFIX}bench:value"  # the value bench/state.py SETs and GETs for its baseline


JOBS = f"{PREFIX}jobs"  # set of "<kind>:<name>" deploy/removal journals


def job(kind: str, name: str) -> str:
    """A deploy's, chain deploy's or removal's journal entry."""
    return f"{PREFIX}job:{kind}:{name}"


def job_lease(kind: str, name: str) -> str:
    """Held (and refreshed) by the worker doing the job; gone when it died."""
    return f"{PREFIX}lease:job:{kind}:{name}"


def token(token_id: str) -> str:
    """An API token's record (its digest, never the token)."""
    return f"{PREFIX}token:{token_id}"


def rate(token_id: str, what: str) -> str:
    """A token's request count for ``what`` in the current rate window (expires)."""
    return f"{PREFIX}rate:{token_id}:{what}"


def operation(op_id: str) -> str:
    """A long operation's record (a deploy, a join...), polled by its caller."""
    return f"{PREFIX}op:{op_id}"


def cluster(name: str) -> str:
    return f"{PREFIX}cluster:{name}"


def service(name: str) -> str:
    return f"{PREFIX}service:{name}"


SIGNAL_PREFIX = f"{PREFIX}signal:"


def signal(series: str, cluster: str, service: str | None, region: str | None) -> str:
    """A sorted set of one series' recent samples (score: timestamp)."""
    return f"{SIGNAL_PREFIX}{series}|{cluster}|{service or ''}|{region or ''}"


def policy(policy_id: str) -> str:
    return f"{PREFIX}policy:{policy_id}"


def last_move(service: str) -> str:
    """When the service's last move started, whoever started it (policies' cooldown)."""
    return f"{PREFIX}lastmove:{service}"


def chain(name: str) -> str:
    return f"{PREFIX}chain:{name}"


def link(link_id: str) -> str:
    return f"{PREFIX}link:{link_id}"


def move(move_id: str) -> str:
    return f"{PREFIX}move:{move_id}"


def move_events(move_id: str) -> str:
    return f"{PREFIX}move:{move_id}:events"


def fault_release(move_id: str) -> str:
    """A list a test pushes to, to end a ``pause:<phase>`` fault's hold (fault injection only)."""
    return f"{PREFIX}fault:{move_id}:release"


def fault_fired(move_id: str, fault: str) -> str:
    """Set once a one-shot injected fault of the move has struck (fault injection only)."""
    return f"{PREFIX}fault:{move_id}:fired:{fault}"


def move_lease(move_id: str) -> str:
    return f"{PREFIX}lease:move:{move_id}"


def service_health(name: str) -> str:
    """Path health of a service's instance, as its node agent last saw it (expires)."""
    return f"{PREFIX}health:{name}"


def reconcile_passes(node: str) -> str:
    """How many reconcile passes a node's agent has finished (a counter; ``node``: c.n)."""
    return f"{PREFIX}reconcile:{node}:passes"


def service_lock(name: str) -> str:
    return f"{PREFIX}lock:service:{name}"


# The per-node index (mobility.store.fleet): each node's set of the services placed on it,
# written in the transaction that writes a placement, so a node agent reads its own share.
NODE_INDEX_BUILT = f"{PREFIX}nodes:indexed"  # set once the index covers every service


def node_services(cluster: str, node: str) -> str:
    """The names of the services whose instance runs on ``cluster``/``node`` (a set); "/"
    is in no name, so no two nodes share one."""
    return f"{PREFIX}node:{cluster}/{node}:services"


def credentials(cred_id: str) -> str:
    """A caller's cluster credentials, sealed (AES-GCM), for one join or unjoin (expires)."""
    return f"{PREFIX}cred:{cred_id}"


# --- identity allocation across Redis restarts (mobility.store.identities) ---

IDENTITY_RUN = f"{PREFIX}seq:run"  # the Redis run (INFO run_id) whose counters were last checked


# --- the Redis ACL's key patterns (mobility.store.acl) ---


def state_pattern(move_id: str) -> str:
    """Every key of one move's state transfer (``mob:state:<move>:*``): its ACL user's keys."""
    return state_frames(move_id).removesuffix("frames") + "*"


# Celery's and kombu's own keys: named by them, not built by this project; listed here so the
# ACL (which must grant them) still names every key in one module.
CELERY_RESULT_PREFIX = "celery-task-meta-"  # a task's result, and the channel announcing it
KOMBU_BINDING_PREFIX = "_kombu.binding."  # an exchange's routing table: "<exchange>"
KOMBU_BINDING_PERMANENT_PREFIX = "_kombu.binding_permanent."
KOMBU_BINDING_DEADLINES = "_kombu.binding_deadlines"  # expiring queues' routing tables
KOMBU_UNACKED = ("unacked", "unacked_index", "unacked_mutex")  # shared by every consumer
KOMBU_PRIORITY_SEP = "\x06\x16"  # a queue's priority lists are "<queue>\x06\x16<priority>"
KOMBU_PRIORITY_STEPS = (3, 6, 9)  # the priorities with a list of their own (0 is the queue)


def queue_keys(queue: str) -> tuple[str, str]:
    """A Celery queue's lists: the queue itself and its priority lists (a glob)."""
    return queue, f"{queue}{KOMBU_PRIORITY_SEP}*"


KOMBU_FANOUT_PREFIX = "/{db}."  # a fanout exchange's pub/sub channels: "/<db>.<exchange>..."
CELERY_PIDBOX = "celery.pidbox"  # remote control's fanout exchange (broadcasts to workers)
CELERY_PIDBOX_REPLY = "reply.celery.pidbox"  # the exchange workers answer remote control on
CELERY_EVENTS = "celeryev"  # the events' fanout exchange (worker heartbeats)


def pidbox_queue(worker: str) -> str:
    """A worker's remote-control queue (``worker``: its node name, or a glob of names)."""
    return f"{worker}.{CELERY_PIDBOX}"


# --- what a key component taken from input may be (step 7: no separator ever reaches a key) ---

import re as _re  # noqa: E402  (kept beside the rules it serves: this module is append-only)

# A name, region, policy id... that becomes part of a key: lowercase letters, digits, '.', '_'
# and '-', starting with a letter or digit, at most 63 characters. No ':' (the key separator),
# no '|' (the signal key's), no '*' or '?' (Redis globs), no whitespace.
SAFE_COMPONENT = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# Policy ids were always allowed capitals (mobility.policies); still no separator.
SAFE_POLICY_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# What mobility.store.moves.new_move_id() makes, and nothing else (":events" is the move's
# event stream: a move id that ended so would read another key's type).
MOVE_ID = r"^mv-[0-9]{14}-[0-9a-f]{6}$"
# A Redis stream entry id; 19 digits at most, so each part is below 2**64 as Redis needs.
STREAM_ID = r"^[0-9]{1,19}-[0-9]{1,19}$"
SIGNAL_SEP = "|"
SIGNAL_OWNERS_PREFIX = f"{PREFIX}signals:of:"

_SAFE = _re.compile(SAFE_COMPONENT)
_SAFE_POLICY = _re.compile(SAFE_POLICY_ID)
_MOVE = _re.compile(MOVE_ID)


def safe_component(value: object) -> bool:
    """Whether ``value`` may be part of a key (see :data:`SAFE_COMPONENT`)."""
    return isinstance(value, str) and _SAFE.fullmatch(value) is not None


def safe_policy_id(value: object) -> bool:
    return isinstance(value, str) and _SAFE_POLICY.fullmatch(value) is not None


def valid_move_id(value: object) -> bool:
    return isinstance(value, str) and _MOVE.fullmatch(value) is not None


def signal_checked(series: str, cluster: str, service: str | None, region: str | None) -> str:
    """:func:`signal`, refusing (ValueError) any component outside :data:`SAFE_COMPONENT`, so
    what :func:`parse_signal` reads back is always what was written."""
    for what, part in (("series", series), ("cluster", cluster), ("service", service),
                       ("region", region)):
        if part is not None and not safe_component(part):
            raise ValueError(f"{what} {part!r} cannot be part of a key: it must match "
                             f"{SAFE_COMPONENT}")
    return signal(series, cluster, service, region)


def parse_signal(key: str) -> tuple[str, str, str | None, str | None] | None:
    """``(series, cluster, service, region)`` of a key :func:`signal` made, or None for a key
    that is not one (another prefix, a wrong number of parts, a part outside the alphabet).
    Never raises: a reader skips what it cannot parse instead of failing on it."""
    if not key.startswith(SIGNAL_PREFIX):
        return None
    parts = key[len(SIGNAL_PREFIX):].split(SIGNAL_SEP)
    if len(parts) != 4:
        return None
    series, cluster, service, region = parts
    if not (safe_component(series) and safe_component(cluster)):
        return None
    if (service and not safe_component(service)) or (region and not safe_component(region)):
        return None
    return series, cluster, service or None, region or None


def signal_owner(cluster: str, service: str | None) -> str:
    """The set of the series keys a service (or, for cluster-level series, a cluster) holds:
    what bounds how many distinct series one owner may have."""
    if service is not None:
        return f"{SIGNAL_OWNERS_PREFIX}service:{service}"
    return f"{SIGNAL_OWNERS_PREFIX}cluster:{cluster}"


# --- move notifications for applications (mobility.store.subscriptions) ---

SUBSCRIPTIONS = f"{PREFIX}subscriptions"  # set of subscription ids


def subscription(sub_id: str) -> str:
    """A subscription's record (its URL, events, filter; never its secret)."""
    return f"{PREFIX}subscription:{sub_id}"


def subscription_secret(sub_id: str) -> str:
    """A subscription's signing secret, sealed: the API may write it, only the orchestrator
    (which signs the deliveries) may read it."""
    return f"{PREFIX}subsecret:{sub_id}"


def subscription_deliveries(sub_id: str) -> str:
    """A capped list of a subscription's recent delivery attempts, newest first."""
    return f"{PREFIX}subdeliveries:{sub_id}"


def subscription_progress(sub_id: str, move_id: str) -> str:
    """A hash of where each event of one move stands for one subscription (queued,
    delivered, gave_up) and its attempts: one delivery per (subscription, move, event)."""
    return f"{PREFIX}subprogress:{sub_id}:{move_id}"


def notification(event_id: str) -> str:
    """The body of one move event's notification, the same for every subscription (expires)."""
    return f"{PREFIX}notification:{event_id}"


# --- what GET /metrics shows (mobility.store.metrics): a few hashes, never one key per move ---

_METRICS = f"{PREFIX}metrics:"  # the prefix alone is no key
METRICS_MOVES = f"{_METRICS}moves"  # hash: "<status>|<origin>" -> ended moves
METRICS_PHASE_MS = f"{_METRICS}phase_ms"  # hash: "<phase>|<le>|sum|count" -> histogram
METRICS_FREEZE_MS = f"{_METRICS}freeze_ms"  # hash: "<le>", "sum", "count"
METRICS_TOTALS = f"{_METRICS}totals"  # hash: "state_bytes", "sync_rounds"
METRICS_REPAIRS = f"{_METRICS}repairs"  # hash: "<node>|repaired|broken" (agents write)
METRICS_PROBES = f"{_METRICS}probes"  # hash: "sent", "lost", "duplicated"
METRICS_PROBED = f"{_METRICS}probed"  # hash: move id -> 1 once its probe was reported
