"""One place that maps the engine's errors to HTTP: bad input is a 4xx, never a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mobility.errors import (
    Conflict,
    FederationError,
    Invalid,
    MobilityError,
    NotFound,
    PlacementError,
)

log = logging.getLogger(__name__)


def status_of(exc: MobilityError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict | PlacementError):
        return 409
    if isinstance(exc, Invalid):
        return 422
    if isinstance(exc, FederationError):
        return 503 if exc.retryable else 502
    return 500


class ApiError(MobilityError):
    """An error raised by a handler with an explicit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 listing where and what; the input is left out (it may not even be valid JSON,
        such as NaN, and echoing it back helps nobody)."""
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(MobilityError)
    async def _mobility(request: Request, exc: MobilityError) -> JSONResponse:
        status = exc.status if isinstance(exc, ApiError) else status_of(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=status, content={"detail": str(exc)})
