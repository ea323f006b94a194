"""Fixtures the state tests share: a short directory for Unix sockets, a two-thread pool (a
round's snapshot and restore run at once), and a fresh move id."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # short: a Unix socket path is at most 107 bytes, and pytest's tmp_path can be longer
    with tempfile.TemporaryDirectory(prefix="smt-state-") as d:
        yield Path(d)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as ex:
        yield ex


@pytest.fixture
def move(request: pytest.FixtureRequest) -> str:
    """A move id naming the test module (``t-relay-...``, ``t-agents-...``)."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return f"t-{module}-{uuid.uuid4().hex}"
