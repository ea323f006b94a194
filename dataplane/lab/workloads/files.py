"""Files the workloads share with the node agent: written whole or not at all."""

from __future__ import annotations

import json
import os


def write_atomic(path: str, text: str) -> None:
    """Readers see the old content or the new one, never half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path: str, payload: object) -> None:
    write_atomic(path, json.dumps(payload))


def mark_ready(path: str | None) -> None:
    """The ready file: the workload serves (its socket is bound)."""
    if path:
        write_atomic(path, str(os.getpid()))
