"""/v1/moves: request a move, follow it, abort it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api.deps import RegistryDep, RequestsDep, SettingsDep
from api.schemas import MoveOut, MoveRequest
from mobility.errors import Conflict, Invalid
from mobility.moving import INJECTABLE
from workers.canvas import start_move

router = APIRouter(prefix="/v1/moves", tags=["moves"])


@router.post("", status_code=202)
def create_move(body: MoveRequest, engine: RequestsDep, settings: SettingsDep) -> MoveOut:
    if body.faults:
        if not settings.fault_injection:
            raise Invalid("fault injection is off (set MOBILITY_FAULT_INJECTION=1 on a "
                             "test deployment to use 'faults')")
        unknown = sorted(set(body.faults) - INJECTABLE)
        if unknown:
            raise Invalid(f"unknown phases in faults: {unknown}; "
                             f"known: {sorted(INJECTABLE)}")
    move = engine.request_move(service=body.service, to_cluster=body.to_cluster,
                               faults=body.faults, strategy=body.strategy)
    start_move(move.id)
    return MoveOut.of(move)


@router.get("")
def list_moves(registry: RegistryDep,
               limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[MoveOut]:
    return [MoveOut.of(m) for m in registry.moves(limit=limit)]


@router.get("/{move_id}")
def get_move(move_id: str, registry: RegistryDep) -> MoveOut:
    return MoveOut.of(registry.get_move(move_id))


@router.post("/{move_id}/abort", status_code=202)
def abort_move(move_id: str, registry: RegistryDep, engine: RequestsDep) -> MoveOut:
    move = registry.get_move(move_id)
    if move.status.terminal:
        raise Conflict(f"move {move_id} already ended ({move.status}); nothing to abort")
    if move.cutover_confirmed or move.forward_only:
        raise Conflict(f"move {move_id} is past its confirmed cutover and only goes "
                       "forward now")
    return MoveOut.of(engine.request_abort(move_id))


@router.get("/{move_id}/events")
async def move_events(
    move_id: str, registry: RegistryDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: every event of the move so far, then live ones, until it ends."""
    await asyncio.to_thread(registry.get_move, move_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        last = last_event_id or "0"
        while True:
            batch = await asyncio.to_thread(registry.read_events, move_id, after=last)
            for ev in batch.events:
                last = ev.id
                yield f"id: {ev.id}\nevent: {ev.kind}\ndata: {json.dumps(ev.to_dict())}\n\n"
            if batch.ended is not None:
                yield f"event: end\ndata: {json.dumps({'status': str(batch.ended)})}\n\n"
                return
            if not batch.events:
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
