"""Interface names and errors of the data plane (dataplane.netlink, dataplane.errors).

Aspects: check_ifname accepts 1..15 characters and refuses 16, empty, '/' and spaces with
DataplaneError; names the kernel refuses for other reasons (':', other whitespace, '.' and
'..', more than 15 bytes in UTF-8) are refused too. DataplaneError's text names the errno,
retryable follows the errno (EBUSY/EAGAIN/ENOBUFS/EINTR yes, EPERM/ENODEV no) unless given.
"""

from __future__ import annotations

import errno

import pytest

from dataplane.errors import DataplaneError, LinkNotFound, NamespaceNotFound
from dataplane.netlink import IFNAMSIZ, check_ifname


@pytest.mark.parametrize("name", ["a", "eth0", "nsm-1", "smlab-h0", "a" * 15, "br-core"])
def test_valid_names_are_returned(name: str) -> None:
    assert check_ifname(name) == name


@pytest.mark.parametrize("name", ["", "a" * 16, "a" * 64, "a/b", "/", "a b", " eth0"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(DataplaneError, match="invalid interface name"):
        check_ifname(name)


def test_ifnamsiz_matches_the_kernel() -> None:
    assert IFNAMSIZ == 15


@pytest.mark.parametrize(
    "name",
    [
        "a:b",
        "a\tb",
        "a\nb",
        ".",
        "..",
        pytest.param("é" * 8, id="8-chars-16-utf8-bytes"),
    ],
)
def test_other_names_the_kernel_refuses(name: str) -> None:
    with pytest.raises(DataplaneError):
        check_ifname(name)


def test_error_text_names_the_errno() -> None:
    exc = DataplaneError("add link x", errno=errno.EBUSY)
    assert str(exc) == f"add link x (errno {errno.EBUSY}: EBUSY)"


def test_error_text_without_errno_is_the_message() -> None:
    assert str(DataplaneError("boom")) == "boom"


def test_error_text_with_an_unknown_errno() -> None:
    assert str(DataplaneError("boom", errno=65000)) == "boom (errno 65000: ?)"


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EAGAIN, errno.ENOBUFS, errno.EINTR])
def test_transient_errnos_are_retryable(code: int) -> None:
    assert DataplaneError("x", errno=code).retryable is True


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENODEV, errno.EEXIST, errno.EOPNOTSUPP, None])
def test_other_errnos_are_not_retryable(code: int | None) -> None:
    assert DataplaneError("x", errno=code).retryable is False


def test_explicit_retryable_wins_over_the_errno() -> None:
    assert DataplaneError("x", errno=errno.EPERM, retryable=True).retryable is True
    assert DataplaneError("x", errno=errno.EBUSY, retryable=False).retryable is False


def test_subclasses_keep_errno_and_are_dataplane_errors() -> None:
    exc = LinkNotFound("no nsm-1", errno=errno.ENODEV)
    assert isinstance(exc, DataplaneError) and exc.errno == errno.ENODEV
    assert "ENODEV" in str(exc)
    assert issubclass(NamespaceNotFound, DataplaneError)
