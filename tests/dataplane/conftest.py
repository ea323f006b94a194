"""Namespace fixtures for the data-plane tests: real namespaces, removed afterwards.

Aspects: every namespace carries a unique test prefix; cleanup tolerates ENODEV and leaves none.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from dataplane import netlink
from tests.conftest import require_root, unique_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    require_root()
    value = unique_prefix()
    yield value
    for name in netlink.namespaces(value):
        for pid in netlink.namespace_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        netlink.delete_namespace(name)
    assert netlink.namespaces(value) == []
