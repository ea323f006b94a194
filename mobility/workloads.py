"""The catalogue of workloads the lab can run, and what their parameters may be.

Only named workloads run, never a command from a request: the node agent turns a name and
checked parameters into a command line it knows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from mobility.errors import Invalid
from mobility.models import IMAGE_WORKLOAD, ContainerSpec, Params, Port, Service

# An image reference we accept: lowercase path components, an optional tag.
IMAGE_REF = re.compile(r"(?=.{1,200}$)[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?"
                       r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?")

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


# --- containers: a user's image, and the limits of any service's container ---

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# The platform's own variables (the state socket, a restore): a spec may not set them.
RESERVED_ENV_PREFIX = "MOBILITY_"
MAX_ARGV = 64
MAX_ARG = 1024
MAX_ENV = 64
MAX_ENV_VALUE = 4096
MAX_PORTS = 16
STATE_MODES = ("none", "sdk")
_MEMORY = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|K|M|G|T|k)?")
_UNITS = {None: 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
MIN_MEMORY = 8 * 2**20  # below this a Python application cannot start
MAX_MEMORY = 64 * 2**30
MAX_CPU = 64.0


def parse_memory(value: object, field_name: str = "resources.memory") -> int:
    """Bytes from ``268435456``, ``"256Mi"``, ``"1Gi"`` or ``"512M"`` (Kubernetes' units)."""
    if isinstance(value, bool):
        raise Invalid(f"{field_name}: a number of bytes or a quantity like '256Mi'")
    if isinstance(value, int | float):
        n = float(value)
    elif isinstance(value, str) and (m := _MEMORY.fullmatch(value.strip())):
        n = float(m["n"]) * _UNITS[m["unit"]]
    else:
        raise Invalid(f"{field_name}: {value!r} is not a quantity of memory (like 268435456, "
                      "'256Mi' or '1Gi')")
    if not math.isfinite(n) or not MIN_MEMORY <= n <= MAX_MEMORY:
        raise Invalid(f"{field_name}: must be between 8Mi and 64Gi, not {value!r}")
    return int(n)


def parse_cpu(value: object, field_name: str = "resources.cpu") -> float:
    """Cores from ``0.5``, ``2`` or ``"500m"`` (Kubernetes' millicores)."""
    if isinstance(value, bool):
        raise Invalid(f"{field_name}: a number of cores like 0.5 or '500m'")
    if isinstance(value, int | float):
        n = float(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+m", value.strip()):
        n = int(value.strip()[:-1]) / 1000
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", value.strip()):
        n = float(value)
    else:
        raise Invalid(f"{field_name}: {value!r} is not a number of cores (like 0.5 or '500m')")
    if not math.isfinite(n) or not 0.01 <= n <= MAX_CPU:
        raise Invalid(f"{field_name}: must be between 0.01 (10m) and {MAX_CPU:g} cores, "
                      f"not {value!r}")
    return round(n, 3)


def _strings(value: object, field_name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"{field_name}: must be a list of strings")
    if len(value) > MAX_ARGV:
        raise Invalid(f"{field_name}: at most {MAX_ARGV} entries")
    for i, v in enumerate(value):
        if len(v) > MAX_ARG or "\x00" in v:
            raise Invalid(f"{field_name}[{i}]: at most {MAX_ARG} characters, no NUL")
    return tuple(value)


def check_container(workload: str | None, raw: Mapping[str, Any]) -> tuple[str, ContainerSpec]:
    """The workload name and container spec of a deploy request; Invalid naming the field.

    A request names either a built-in ``workload`` (its reference image runs it) or an
    ``image`` of its own with ``command``, ``args``, ``env``, ``ports`` and ``state``;
    ``resources`` apply to both. Whether the image exists is the caller's check (the
    catalogue of imported images is in the registry).
    """
    image = raw.get("image")
    if (workload is None) == (image is None):
        raise Invalid("workload/image: give either a built-in 'workload' "
                      f"({', '.join(sorted(CATALOGUE))}) or an 'image' of your own")
    if image is None:
        for name in ("command", "args", "env", "ports", "state"):
            if raw.get(name) not in (None, [], {}, "none"):
                raise Invalid(f"{name}: only a service with its own 'image' takes it; a "
                              f"built-in workload takes 'params'")
    elif not isinstance(image, str) or not IMAGE_REF.fullmatch(image):
        raise Invalid(f"image: {image!r} is not an image name like 'counter:1' or "
                      "'example.org/team/app:2.0'")
    else:
        image = normalize_image(image)
    env_raw = raw.get("env") or {}
    if not isinstance(env_raw, Mapping):
        raise Invalid("env: must be a mapping of names to strings")
    if len(env_raw) > MAX_ENV:
        raise Invalid(f"env: at most {MAX_ENV} variables")
    env: list[tuple[str, str]] = []
    for k, v in env_raw.items():
        if not isinstance(k, str) or not ENV_NAME.fullmatch(k):
            raise Invalid(f"env: {k!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if k.startswith(RESERVED_ENV_PREFIX):
            raise Invalid(f"env.{k}: names starting with {RESERVED_ENV_PREFIX} are the "
                          "platform's")
        if not isinstance(v, str) or len(v) > MAX_ENV_VALUE:
            raise Invalid(f"env.{k}: must be a string of at most {MAX_ENV_VALUE} characters")
        if any(c in v for c in "\x00\n\r"):
            raise Invalid(f"env.{k}: a value holds no NUL and no line break (the runtime's "
                          "env file cannot carry them)")
        env.append((k, v))
    ports_raw = raw.get("ports") or []
    if not isinstance(ports_raw, list | tuple) or len(ports_raw) > MAX_PORTS:
        raise Invalid(f"ports: must be a list of at most {MAX_PORTS} ports")
    ports: list[Port] = []
    for i, p in enumerate(ports_raw):
        if isinstance(p, int) and not isinstance(p, bool):
            p = {"port": p}
        if not isinstance(p, Mapping) or set(p) - {"port", "protocol"}:
            raise Invalid(f"ports[{i}]: must be a port number or {{port, protocol}}")
        number, proto = p.get("port"), p.get("protocol", "udp")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise Invalid(f"ports[{i}].port: must be a whole number from 1 to 65535, "
                          f"not {number!r}")
        if proto not in ("udp", "tcp"):
            raise Invalid(f"ports[{i}].protocol: must be 'udp' or 'tcp', not {proto!r}")
        if any(q.port == number and q.protocol == proto for q in ports):
            raise Invalid(f"ports[{i}]: {number}/{proto} is listed twice")
        ports.append(Port(port=number, protocol=proto))
    state = raw.get("state") or "none"
    if state not in STATE_MODES:
        raise Invalid(f"state: must be 'none' or 'sdk' (the application serves the state "
                      f"SDK on /run/mobility/state.sock), not {state!r}")
    res = raw.get("resources") or {}
    if not isinstance(res, Mapping) or set(res) - {"cpu", "memory"}:
        raise Invalid("resources: takes 'cpu' (cores, or '500m') and 'memory' (bytes, or "
                      "'256Mi')")
    cpu = None if res.get("cpu") is None else parse_cpu(res["cpu"])
    memory = None if res.get("memory") is None else parse_memory(res["memory"])
    spec = ContainerSpec(image=image, command=_strings(raw.get("command"), "command"),
                         args=_strings(raw.get("args"), "args"), env=tuple(env),
                         ports=tuple(ports), state=state, cpu=cpu, memory=memory)
    return (workload if image is None else IMAGE_WORKLOAD), spec  # type: ignore[return-value]


def normalize_image(name: str) -> str:
    """``name`` with its tag (``latest`` when it has none), as the catalogue keys it."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def is_stateful(svc: Service) -> bool:
    """Whether a move must carry the service's state over (the SYNC phase)."""
    return svc.workload in STATEFUL or svc.container.state == "sdk"


def serving_port(svc: Service) -> int:
    """The port a client of ``svc`` sends to: its first declared port, else its ``port``."""
    if svc.container.ports:
        return svc.container.ports[0].port
    return int(svc.params.get("port", 7000))
