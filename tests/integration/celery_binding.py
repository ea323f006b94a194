"""Bind the process's Celery app (``workers.app.app``) and celery-redbeat to a test Redis.

In-process API tests make the app send tasks (a move's canvas, a deploy, a schedule): they
must land in the test's Redis, never in whatever the default settings or a stack's env file
point at. No worker consumes them; they stay queued, harmlessly.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery import Celery

BOUND = ("broker_url", "result_backend", "redbeat_redis_url")


def _reset(app: Celery) -> None:
    """Drop what the app built from its old URLs (Celery and redbeat cache them): the broker
    pool, the producer pool, the per-thread result backend, redbeat's client and conf."""
    # No public way to drop these: the private attributes Celery's own after-fork hook resets.
    pool = app._pool
    if pool is not None:
        pool.force_close_all()
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    app._local = threading.local()  # holds the per-thread result backend
    # redbeat caches its client and its reading of the conf (with the URL) on the app
    app.redbeat_redis = None  # redbeat.schedulers.REDBEAT_REDIS_KEY
    app.__dict__.pop("redbeat_conf", None)  # redbeat.schedulers.ensure_conf


@contextmanager
def celery_bound_to(url: str) -> Iterator[None]:
    """Inside: settings from the environment (no env file), and the Celery app on ``url``."""
    from redbeat.schedulers import ensure_conf

    from mobility.settings import get_settings
    from workers.app import app, configure

    before = {k: app.conf[k] for k in BOUND} if app.configured else None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBILITY_REDIS_URL", url)
        mp.setenv("MOBILITY_ENV_FILE", os.devnull)
        get_settings.cache_clear()
        try:
            configure(app, url)
            _reset(app)
            assert app.conf.broker_url == url
            assert ensure_conf(app).redis_url == url  # where redbeat writes schedules
            yield
        finally:
            get_settings.cache_clear()
    # back to what it was, or to what configuring it lazily would have given
    app.conf.update(before or dict.fromkeys(BOUND, get_settings().redis_url.get_secret_value()))
    _reset(app)
