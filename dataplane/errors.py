"""The data plane's own errors, so callers never see pyroute2's exception types."""

from __future__ import annotations

import errno as errno_codes

# Errors a second attempt can fix: the kernel was busy or an object was half made.
_RETRYABLE = {errno_codes.EBUSY, errno_codes.EAGAIN, errno_codes.ENOBUFS, errno_codes.EINTR}


class DataplaneError(Exception):
    """A netlink or namespace operation failed.

    ``errno`` is the kernel's error code when there is one (pyroute2's ``NetlinkError.code``);
    ``retryable`` says whether trying the same call again can help.
    """

    def __init__(self, message: str, *, errno: int | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.errno = errno
        self.retryable = (errno in _RETRYABLE) if retryable is None else retryable

    def __str__(self) -> str:
        base = super().__str__()
        if self.errno is None:
            return base
        return f"{base} (errno {self.errno}: {errno_codes.errorcode.get(self.errno, '?')})"


class LinkNotFound(DataplaneError):
    """The named interface does not exist in the namespace."""


class NamespaceNotFound(DataplaneError):
    """The named network namespace does not exist."""
