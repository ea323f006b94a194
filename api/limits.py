"""A cap on request bodies, enforced before anything holds them: 413 beyond it.

A body that announces its size (``Content-Length``) larger than the cap is answered 413 at
once, its bytes never read; one that does not (chunked) is counted as it streams in and
refused as soon as the count passes the cap, so at most the cap (plus one chunk) is ever
held, whoever sends it, with or without a token (FastAPI reads a route's body before its
dependencies, the token check among them). A ``Content-Length`` that is not a number is a 400.

The cap is ``MOBILITY_API_MAX_BODY_BYTES`` (1 MiB by default): the largest body any route
takes is a kubeconfig or a batch of 1,000 signal samples, far below it. The answers are the
error handler's usual ``{"detail": "..."}`` (:class:`api.schemas.ErrorOut`).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mobility.settings import Settings

log = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the cap. An HTTPException, so the
    route (which re-raises those while reading a body) and the app's handler answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large(limit))


def too_large(limit: int) -> str:
    return (f"the request body is larger than {limit} bytes, the most this API reads "
            "(MOBILITY_API_MAX_BODY_BYTES)")


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# Routes whose body is a file, streamed to disk by the route itself (never held): their own
# cap, from the settings, instead of the general one. Method and exact path.
UPLOADS = {("POST", "/v1/images"): "image_max_bytes"}


class BodyLimit:
    """Pure ASGI middleware (no request object, no buffering): checks the announced length,
    then counts the bytes ``receive`` hands the app."""

    def __init__(self, app: ASGIApp, *, max_bytes: int,
                 uploads: dict[tuple[str, str], int] | None = None) -> None:
        self.app = app
        self.general_max = max_bytes
        self.uploads = uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.uploads.get((scope.get("method", ""), scope.get("path", "")),
                                     self.general_max)
        lengths = [v.strip() for k, v in scope.get("headers", ())
                   if k.lower() == b"content-length"]
        if lengths:
            # digits only (no sign, no spaces inside); several headers must agree (RFC 9110)
            if not all(v.isdigit() for v in lengths) or len({int(v) for v in lengths}) != 1:
                await _answer(send, 400, "Content-Length must be one non-negative integer")
                return
            if int(lengths[0]) > max_bytes:
                await _answer(send, 413, too_large(max_bytes))
                return

        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyTooLarge:
            # read outside a route (which answers it itself): answer here, unless too late
            if started:
                raise
            await _answer(send, 413, too_large(max_bytes))


def install(app: FastAPI) -> None:
    """Cap the app's request bodies at its settings' ``api_max_body_bytes``."""
    settings: Settings = app.state.settings
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes,
                       uploads={k: int(getattr(settings, v)) for k, v in UPLOADS.items()})
