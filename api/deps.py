"""Dependencies: the registry and the engine, built once per app from its settings."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from mobility.moving import Engine
from mobility.registry import Registry
from mobility.settings import Settings


def get_registry(request: Request) -> Registry:
    return cast(Registry, request.app.state.registry)


def get_engine(request: Request) -> Engine:
    return cast(Engine, request.app.state.engine)


def get_app_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


RegistryDep = Annotated[Registry, Depends(get_registry)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
