"""State transfer errors; each says whether a retry can help."""

from __future__ import annotations


class StateTransferError(Exception):
    """The transfer failed; the move must roll back with the source unfrozen."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class FrameError(StateTransferError):
    """A frame failed its authentication tag, or arrived out of sequence (gap or replay)."""
