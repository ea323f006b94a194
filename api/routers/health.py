"""/healthz: the API answers and reaches Redis."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.deps import RegistryDep
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "Redis is out of reach"}})
def healthz(registry: RegistryDep) -> JSONResponse:
    try:
        registry.ping()
    except RedisError as exc:
        return JSONResponse(status_code=503,
                            content=Health(status="degraded", redis=False,
                                           detail=str(exc)).model_dump())
    return JSONResponse(content=Health(status="ok", redis=True).model_dump())
