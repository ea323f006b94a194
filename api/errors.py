"""The one place that maps the engine's errors to HTTP: bad input is a 4xx, never a 500.

The status follows the error's wire kind (:func:`mobility.errors.kind_of`), the same kind a
worker's answer carries, so an error raised here and one that came back from a task map alike.

The OpenAPI says what comes back (:func:`declare`): every operation declares the answers the
app gives to any request (400 and 413 from :mod:`api.limits`, 401 and 403 from
:mod:`api.auth` where a token is needed), and its 422 is the body the handler below really
sends (:class:`api.schemas.ValidationErrorOut`), not FastAPI's own; each route declares its
own 404, 409 or 429.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.schemas import ErrorOut, ValidationErrorOut, answers
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

    generate = app.openapi  # FastAPI's own; it caches what it built in app.openapi_schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            declare(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point


_REF = "#/components/schemas/{model}"
_EVERYWHERE = (400, 413)  # api.limits answers these to any request
_WITH_TOKEN = (401, 403)  # api.auth answers these where a token is needed


def _component(components: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    """Put ``model`` (and the models it uses) among the components; a reference to it."""
    schema = model.model_json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _hoist(node: Any, components: dict[str, Any]) -> None:
    """Move the ``$defs`` of an inline schema (a route's ``openapi_extra``) to the components,
    where their references (made with :data:`_REF`) point."""
    if isinstance(node, dict):
        components.update(node.pop("$defs", {}))
        for value in node.values():
            _hoist(value, components)
    elif isinstance(node, list):
        for value in node:
            _hoist(value, components)


def declare(spec: dict[str, Any]) -> dict[str, Any]:
    """Declare, in a built OpenAPI document (in place), the error answers of every operation
    with the bodies the handlers send."""
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    error = _component(components, ErrorOut)
    invalid = _component(components, ValidationErrorOut)
    for item in spec.get("paths", {}).values():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            _hoist(op.get("requestBody"), components)
            responses = op["responses"]
            codes = _EVERYWHERE + (_WITH_TOKEN if op.get("security") else ())
            for code, declared in answers(*codes).items():
                responses.setdefault(str(code), {
                    "description": declared["description"],
                    "content": {"application/json": {"schema": error}}})
            if "422" in responses:
                responses["422"].setdefault("content", {})["application/json"] = {
                    "schema": invalid}
                if responses["422"].get("description") == "Validation Error":
                    responses["422"]["description"] = answers(422)[422]["description"]
    text = repr(spec["paths"])
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, now unused
        if repr(_REF.format(model=name)) not in text:
            components.pop(name, None)
    return spec
