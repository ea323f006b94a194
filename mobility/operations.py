"""Long operations (a deploy, a chain, a cluster join): recorded, run by a worker, polled.

No API request waits for a worker: the request records an :class:`Operation`, sends its task
(with an expiry) and answers 202 with the operation; the caller polls
``GET /v1/operations/{id}`` (or the resource itself). A task nobody took before its expiry
leaves the operation ``failed`` with a reason, never pending for ever.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class OpStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (OpStatus.SUCCEEDED, OpStatus.FAILED)


@dataclass(frozen=True)
class Operation:
    id: str
    kind: str  # the task it runs, e.g. "services.deploy"
    target: str  # what it acts on, e.g. the service's name
    status: OpStatus
    created_at: float
    expires_at: float  # a task not started by then is dropped by the broker
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_kind: str | None = None

    @classmethod
    def new(cls, *, kind: str, target: str, expires_s: float) -> Operation:
        now = time.time()
        return cls(id=f"op-{secrets.token_hex(8)}", kind=kind, target=target,
                   status=OpStatus.PENDING, created_at=now, expires_at=now + expires_s)

    def seen_at(self, now: float) -> Operation:
        """As a caller should see it at ``now``: a pending one past its expiry has failed."""
        if self.status == OpStatus.PENDING and now > self.expires_at:
            return replace(self, status=OpStatus.FAILED, finished_at=self.expires_at,
                           error=f"no worker started {self.kind} before it expired",
                           error_kind="failed")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target,
                "status": str(self.status), "created_at": self.created_at,
                "expires_at": self.expires_at, "started_at": self.started_at,
                "finished_at": self.finished_at, "result": dict(self.result),
                "error": self.error, "error_kind": self.error_kind}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Operation:
        return cls(id=str(d["id"]), kind=str(d["kind"]), target=str(d["target"]),
                   status=OpStatus(d["status"]), created_at=float(d["created_at"]),
                   expires_at=float(d["expires_at"]), started_at=d.get("started_at"),
                   finished_at=d.get("finished_at"), result=dict(d.get("result") or {}),
                   error=d.get("error"), error_kind=d.get("error_kind"))
