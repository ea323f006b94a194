"""The API app factory: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.routers import chains, clusters, health, moves, services
from mobility.settings import Settings, get_settings
from workers.moves import build_engine


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="service-mobility", version="0.1.0")
    engine = build_engine(settings)
    app.state.settings = settings
    app.state.registry = engine.registry
    app.state.engine = engine
    errors.install(app)
    for r in (moves.router, services.router, chains.router, clusters.router, health.router):
        app.include_router(r)
    return app
