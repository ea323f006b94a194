"""Dependencies: the registry and the move requests, built once per app from its settings."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from mobility.moving import MoveRequests
from mobility.settings import Settings
from mobility.store import Registry


def get_registry(request: Request) -> Registry:
    return cast(Registry, request.app.state.registry)


def get_requests(request: Request) -> MoveRequests:
    return cast(MoveRequests, request.app.state.requests)


def get_app_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


RegistryDep = Annotated[Registry, Depends(get_registry)]
RequestsDep = Annotated[MoveRequests, Depends(get_requests)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
