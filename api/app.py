"""The API app factory: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors, limits, metrics
from api.auth import Authorized
from api.routers import (
    automation,
    chains,
    clusters,
    health,
    images,
    moves,
    operations,
    services,
    subscriptions,
    tokens,
    ui,
)
from mobility.moving import MoveRequests
from mobility.settings import Settings, get_settings
from mobility.store import Registry


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="service-mobility", version="0.1.0")
    registry = Registry.from_url(settings.redis_url.get_secret_value())
    app.state.settings = settings
    app.state.registry = registry
    app.state.requests = MoveRequests(registry=registry, settings=settings)
    errors.install(app)
    limits.install(app)
    for r in (moves.router, services.router, chains.router, clusters.router,
              operations.router, automation.router, tokens.router, images.router,
              subscriptions.router, metrics.router):
        app.include_router(r, dependencies=[Authorized])
    metrics.install(app, registry)  # GET /metrics (a viewer's) and the request timer
    app.include_router(health.router)  # open: see api.auth
    app.include_router(ui.router)  # open: static assets, no data (see api.routers.ui)
    if settings.api_cors_origins:  # off unless origins are named
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.api_cors_origins),
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"])
    return app
