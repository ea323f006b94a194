"""/v1/moves: request a move, follow it, abort it.

A move id in a path is what :func:`mobility.store.moves.new_move_id` makes and nothing else
(:data:`mobility.keys.MOVE_ID`), so no path can name another key (``<id>:events`` is the move's
event stream). ``Last-Event-ID`` is a Redis stream id or a 422, checked before the stream
starts; an error once it has started ends it with an ``error`` event, never a broken stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import WithJsonSchema
from redis.exceptions import RedisError

from api.deps import RegistryDep, RequestsDep, SettingsDep
from api.schemas import MoveOut, MoveRequest, answers
from mobility import keys
from mobility.errors import Conflict, Invalid, MobilityError
from mobility.moving import INJECTABLE
from workers.canvas import start_move

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/moves", tags=["moves"])

MoveId = Annotated[str, Path(pattern=keys.MOVE_ID, examples=["mv-20261128093015-a1b2c3"],
                             description="a move's id, as POST /v1/moves made it")]

LastEventId = Annotated[
    str | None,
    Header(pattern=keys.STREAM_ID, max_length=39,
           description="resume after this event (the id of the last one received)"),
    # an absent header is None here; on the wire it is a string or nothing, never "null"
    WithJsonSchema({"type": "string", "pattern": keys.STREAM_ID, "maxLength": 39,
                    "examples": ["1732786215000-0"]}),
]

SSE: dict[int | str, dict[str, Any]] = {200: {
    "description": "text/event-stream: `id`, `event` (a phase's start or end...) and `data` "
                   "(the event as JSON) per event; then `event: end`, or `event: error` "
                   "(`data`: its `detail`) when the stream cannot go on",
    "content": {"text/event-stream": {"itemSchema": {  # one event (OpenAPI 3.2, as FastAPI's)
        "type": "object", "required": ["data"],
        "properties": {"id": {"type": "string", "pattern": keys.STREAM_ID},
                       "event": {"type": "string"},
                       "data": {"type": "string", "contentMediaType": "application/json"}}}}}}}


@router.post("", status_code=202, responses=answers(404, 409, 422))
def create_move(body: MoveRequest, engine: RequestsDep, settings: SettingsDep) -> MoveOut:
    """Record the move and start it (202); 404 an unknown service or cluster; 409 already
    there or already moving; 422 malformed, ``faults`` refused, or a downtime budget that
    cannot apply (``deadline_s`` without ``max_freeze_ms``, a budget on stop-and-copy)."""
    if body.faults:
        if not settings.fault_injection:
            raise Invalid("fault injection is off (set MOBILITY_FAULT_INJECTION=1 on a "
                             "test deployment to use 'faults')")
        unknown = sorted(set(body.faults) - INJECTABLE)
        if unknown:
            raise Invalid(f"unknown phases in faults: {unknown}; "
                             f"known: {sorted(INJECTABLE)}")
    move = engine.request_move(service=body.service, to_cluster=body.to_cluster,
                               faults=body.faults, strategy=body.strategy,
                               max_freeze_ms=body.max_freeze_ms, deadline_s=body.deadline_s)
    start_move(move.id)
    return MoveOut.of(move)


@router.get("")
def list_moves(registry: RegistryDep,
               limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[MoveOut]:
    return [MoveOut.of(m) for m in registry.moves(limit=limit)]


@router.get("/{move_id}", responses=answers(404))
def get_move(move_id: MoveId, registry: RegistryDep) -> MoveOut:
    return MoveOut.of(registry.get_move(move_id))


@router.post("/{move_id}/abort", status_code=202, responses=answers(404, 409))
def abort_move(move_id: MoveId, registry: RegistryDep, engine: RequestsDep) -> MoveOut:
    move = registry.get_move(move_id)
    if move.status.terminal:
        raise Conflict(f"move {move_id} already ended ({move.status}); nothing to abort")
    if move.cutover_confirmed or move.forward_only:
        past = ("its confirmed cutover" if move.cutover_confirmed
                else "its switch (its target may have taken writes)")
        raise Conflict(f"move {move_id} is past {past} and only goes forward now")
    return MoveOut.of(engine.request_abort(move_id))


@router.get("/{move_id}/events", response_class=StreamingResponse,
            responses={**SSE, **answers(404)})
async def move_events(move_id: MoveId, registry: RegistryDep,
                      last_event_id: LastEventId = None) -> StreamingResponse:
    """Server-sent events: every event of the move so far (or after ``Last-Event-ID``), then
    live ones, until it ends."""
    await asyncio.to_thread(registry.get_move, move_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        last = last_event_id or "0"
        while True:
            try:
                batch = await asyncio.to_thread(registry.read_events, move_id, after=last)
            except (MobilityError, RedisError) as exc:  # the move vanished, Redis went away
                log.warning("event stream of %s ended: %s", move_id, exc)
                yield f"event: error\ndata: {json.dumps({'detail': str(exc)})}\n\n"
                return
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
