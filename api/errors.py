"""The one place that maps the engine's errors to HTTP: bad input is a 4xx, never a 500.

The status follows the error's wire kind (:func:`mobility.errors.kind_of`), the same kind a
worker's answer carries, so an error raised here and one that came back from a task map alike.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mobility.errors import MobilityError, kind_of

log = logging.getLogger(__name__)

STATUS = {"not_found": 404, "conflict": 409, "invalid": 422, "stale": 409, "failed": 502}


def status_of(exc: MobilityError) -> int:
    kind = kind_of(exc)
    if kind == "federation":
        return 503 if exc.retryable else 502
    return STATUS.get(kind, 500)


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
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=status, content={"detail": str(exc)})
