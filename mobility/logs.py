"""Logging set-up: JSON lines when not on a TTY, plain text on one; every line logged while
working on a move carries the move's id.

Why a context variable: a move's work spans the engine, the store, the node agent port and
Celery's own tracing, none of which take a move id for logging's sake. The worker binds the
id once around a task (:func:`move_context`, or :func:`bind_move` from Celery's task signals);
:class:`MoveFilter`, on the handler, stamps it on every record, so a line written deep in a
library called for a move still says which move it was for. Each thread has its own context,
so the threads pool's concurrent moves never see each other's id.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from mobility import keys

_MOVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("mobility_move_id",
                                                                   default=None)
_MOVE_RE = re.compile(keys.MOVE_ID)

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(move_tag)s%(name)s: %(message)s"


def is_move_id(value: object) -> bool:
    """Whether ``value`` is a move id (:data:`mobility.keys.MOVE_ID`), so nothing else is
    ever logged as one."""
    return isinstance(value, str) and _MOVE_RE.fullmatch(value) is not None


def current_move() -> str | None:
    """The move this thread is working on, if any."""
    return _MOVE.get()


def bind_move(move_id: str | None) -> contextvars.Token[str | None]:
    """Bind ``move_id`` (anything not a move id binds none) until :func:`unbind_move`; for
    callers that cannot wrap the work in a ``with`` (Celery's prerun/postrun signals)."""
    return _MOVE.set(move_id if is_move_id(move_id) else None)


def unbind_move(token: contextvars.Token[str | None]) -> None:
    _MOVE.reset(token)


@contextmanager
def move_context(move_id: str | None) -> Iterator[None]:
    """Every record logged inside carries ``move_id``."""
    token = bind_move(move_id)
    try:
        yield
    finally:
        unbind_move(token)


class MoveFilter(logging.Filter):
    """Adds ``move_id`` (the bound move, or None) to each record; an explicit
    ``extra={"move_id": ...}`` wins. On the handler, not a logger: a logger's filters do not
    see records propagated from its children."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "move_id", None) is None:
            record.move_id = _MOVE.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        move_id = getattr(record, "move_id", None)
        if move_id is not None:
            out["move_id"] = move_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class HumanFormatter(logging.Formatter):
    """``time LEVEL [mv-...] logger: message``; the tag only on a move's lines."""

    def __init__(self) -> None:
        super().__init__(HUMAN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        move_id = getattr(record, "move_id", None)
        record.move_tag = f"[{move_id}] " if move_id else ""
        return super().format(record)


def make_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler on ``stream`` (stderr): human lines on a TTY, JSON lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    isatty = getattr(stream, "isatty", None)
    handler.setFormatter(HumanFormatter() if callable(isatty) and isatty() else JsonFormatter())
    handler.addFilter(MoveFilter())
    return handler


def configure_logging(level: str | None = None) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(make_handler())
    root.setLevel(level or os.environ.get("MOBILITY_LOG_LEVEL", "INFO"))
