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
BENCH_VALUE = f"{PREFIX}bench:value"  # the value bench/state.py SETs and GETs for its baseline


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
