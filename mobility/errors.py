"""The engine's error hierarchy. Each error says whether retrying can help.

The API maps these to HTTP in one handler: NotFound -> 404, Conflict -> 409, Invalid -> 422.
"""

from __future__ import annotations


class MobilityError(Exception):
    """Base of every error the engine raises on purpose."""

    retryable = False


class NotFound(MobilityError):
    """Something the request names does not exist."""


class Conflict(MobilityError):
    """The request is valid but clashes with the current state."""


class Invalid(MobilityError):
    """The request is malformed in a way a schema cannot catch."""


class PlacementError(MobilityError):
    """No node can take the instance under the placement rules."""


class PhaseFailed(MobilityError):
    """A phase could not complete; the move rolls back."""


class MoveAborted(PhaseFailed):
    """Someone asked to abort the move before its cutover was confirmed."""


class InjectedFault(PhaseFailed):
    """A fault injected on purpose (tests and chaos drills only)."""


class FederationError(MobilityError):
    """A placement backend failed; ``retryable`` says whether another try can help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class NodeUnavailable(FederationError):
    """A node's agent did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)
