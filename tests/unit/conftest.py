"""Fixtures shared by the unit tests.

Aspects: every unit test runs with no ``MOBILITY_*`` variable from the caller's environment, so
a developer's shell (say ``MOBILITY_ENVIRONMENT=production``) cannot change what
:class:`mobility.settings.Settings` builds.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_mobility_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MOBILITY_"):
            monkeypatch.delenv(key)
