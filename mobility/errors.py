"""The engine's error hierarchy, every error the project raises on purpose, in one place.

    MobilityError                    retryable = False unless said
    +-- NotFound                     kind "not_found"   (HTTP 404)
    +-- Conflict                     kind "conflict"    (HTTP 409)
    |   +-- PlacementError           no node can take the instance
    +-- Invalid                      kind "invalid"     (HTTP 422)
    |   +-- TransitionError          a move status change the saga does not allow
    +-- StaleEpoch                   kind "stale"       a task of an older epoch of a move
    |   +-- LeaseLost                another worker holds the move's lease
    +-- PhaseFailed                  kind "failed"      a phase could not complete
    |   +-- MoveAborted, InjectedFault
    |   +-- FreezeBudgetExceeded     the freeze would exceed the move's max_freeze_ms
    +-- FederationError              kind "federation"  a backend failed (retryable or not)
        +-- NodeUnavailable          a node's agent did not answer (retryable)
        +-- KubeError                an API server answered with an error status
        +-- ClusterUnreachable       no answer from an API server (retryable)

Errors cross a Celery queue as data, never as pickled exceptions: :func:`to_wire` makes the one
wire form (``{"ok": False, "kind", "error", "retryable"}``) and :func:`from_wire` turns it back
into an error of the right class. The API maps a ``kind`` to HTTP in one handler
(``api/errors.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Wire = dict[str, object]  # a task's answer: {"ok": True, ...} or the error wire form


class MobilityError(Exception):
    """Base of every error the engine raises on purpose."""

    retryable = False


class NotFound(MobilityError):
    """Something the request names does not exist."""


class Conflict(MobilityError):
    """The request is valid but clashes with the current state."""


class Invalid(MobilityError):
    """The request is malformed in a way a schema cannot catch."""


class TransitionError(Invalid, ValueError):
    """A status change the saga does not allow."""


class StaleEpoch(MobilityError):
    """A task for an older epoch of a move: the reaper has taken the move over."""


class LeaseLost(StaleEpoch):
    """Another worker holds the move's lease (a redelivered task, or a takeover after this
    worker stalled): this one stops without recording anything."""


class PlacementError(Conflict):
    """No node can take the instance under the placement rules."""


class PhaseFailed(MobilityError):
    """A phase could not complete; the move rolls back."""


class MoveAborted(PhaseFailed):
    """Someone asked to abort the move before its cutover was confirmed."""


class InjectedFault(PhaseFailed):
    """A fault injected on purpose (tests and chaos drills only)."""


class FreezeBudgetExceeded(PhaseFailed):
    """The predicted freeze window stayed above the move's ``max_freeze_ms`` until its
    ``deadline_s``: the move rolls back before freezing (waiting longer cannot help)."""


class FederationError(MobilityError):
    """A placement backend failed; ``retryable`` says whether another try can help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class NodeUnavailable(FederationError):
    """A node's agent did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class KubeError(FederationError):
    """The API server answered with an error status; ``status`` and ``reason`` say which."""

    def __init__(self, message: str, *, status: int, reason: str) -> None:
        retryable = (status == 409 and reason != "AlreadyExists") or status == 429 or status >= 500
        super().__init__(message, retryable=retryable)
        self.status = status
        self.reason = reason

    @property
    def conflict(self) -> bool:
        """A write lost an optimistic-concurrency race: read again and retry."""
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def not_found(self) -> bool:
        return self.status == 404


class ClusterUnreachable(FederationError):
    """No answer from a cluster's API server (refused, reset, timed out): a retry may help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


# The wire kind of each class, most specific first (the first ``isinstance`` match wins).
_KINDS: tuple[tuple[type[MobilityError], str], ...] = (
    (NotFound, "not_found"),
    (Conflict, "conflict"),
    (Invalid, "invalid"),
    (StaleEpoch, "stale"),
    (FederationError, "federation"),
    (PhaseFailed, "failed"),
    (MobilityError, "failed"),
)
_CLASSES: dict[str, type[MobilityError]] = {
    "not_found": NotFound, "conflict": Conflict, "invalid": Invalid, "stale": StaleEpoch,
    "federation": FederationError, "failed": PhaseFailed,
}


def kind_of(exc: MobilityError) -> str:
    return next(kind for cls, kind in _KINDS if isinstance(exc, cls))


def to_wire(exc: MobilityError) -> Wire:
    """The one form an error takes in a task's answer."""
    return {"ok": False, "kind": kind_of(exc), "error": str(exc),
            "retryable": bool(exc.retryable)}


def from_wire(answer: Mapping[str, Any]) -> MobilityError:
    """The error a task's failed answer stands for (``PhaseFailed`` for an unknown kind)."""
    cls = _CLASSES.get(str(answer.get("kind")), PhaseFailed)
    message = str(answer.get("error") or "the task failed without saying why")
    if cls is FederationError:
        return FederationError(message, retryable=bool(answer.get("retryable")))
    return cls(message)
