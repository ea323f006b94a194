"""Fixtures the lab-based integration tests share: the API client with the stack's own token,
and the registry on the stack's Redis (admin), both closed after each test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cli.stack import Stack
from mobility.store import Registry


@pytest.fixture
def api(lab_stack: Stack) -> Iterator[httpx.Client]:
    with lab_stack.api_client(timeout=60) as client:
        yield client


@pytest.fixture
def registry(lab_stack: Stack) -> Iterator[Registry]:
    reg = Registry.from_url(lab_stack.redis_url())
    yield reg
    reg.r.close()
