"""The catalogue of workloads the lab can run, and what their parameters may be.

Only named workloads run, never a command from a request: the node agent turns a name and
checked parameters into a command line it knows.
"""

from __future__ import annotations

import math

from mobility.errors import Invalid
from mobility.models import Params

# name -> parameter -> (type, minimum, maximum)
CATALOGUE: dict[str, dict[str, tuple[type, float, float]]] = {
    "echo": {"port": (int, 1, 65535)},
    "probe": {"port": (int, 1, 65535), "rate": (float, 1, 20000), "count": (int, 0, 10**9)},
    "sessions": {"port": (int, 1, 65535), "state_mb": (float, 0, 4096),
                 "dirty_rate": (float, 0, 100)},
    "session-probe": {"port": (int, 1, 65535), "rate": (float, 1, 20000),
                      "sessions": (int, 1, 10000), "rto_ms": (float, 1, 10000)},
    "middlebox": {},
}
DEFAULTS: dict[str, Params] = {
    "echo": {"port": 7000},
    "probe": {"port": 7000, "rate": 1000.0, "count": 0},
    "sessions": {"port": 7000, "state_mb": 0.0, "dirty_rate": 0.0},
    "session-probe": {"port": 7000, "rate": 1000.0, "sessions": 16, "rto_ms": 100.0},
    "middlebox": {},
}
# Workloads whose instances hold state that a move must carry over (the SYNC phase).
STATEFUL = frozenset({"sessions"})
# Workloads that send to exactly one peer service.
CLIENTS = frozenset({"probe", "session-probe"})
# Clients that can pause and resume, so that moving them loses nothing.
PAUSABLE = frozenset({"probe", "session-probe"})


def check(workload: str, params: Params) -> Params:
    """Parameters with defaults filled in; Invalid with a clear message otherwise."""
    if workload not in CATALOGUE:
        raise Invalid(f"unknown workload {workload!r}; known: {', '.join(sorted(CATALOGUE))}")
    spec = CATALOGUE[workload]
    out: Params = dict(DEFAULTS[workload])
    for key, value in params.items():
        if key not in spec:
            raise Invalid(f"workload {workload!r} takes no parameter {key!r}; "
                          f"it takes {', '.join(sorted(spec))}")
        kind, lo, hi = spec[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"parameter {key!r} must be a number")
        if not math.isfinite(value):
            raise Invalid(f"parameter {key!r} must be a finite number")
        if kind is int and float(value) != int(value):
            raise Invalid(f"parameter {key!r} must be a whole number")
        if not lo <= value <= hi:
            raise Invalid(f"parameter {key!r} must be between {lo:g} and {hi:g}")
        out[key] = int(value) if kind is int else float(value)
    return out
