"""Deploy and removal tasks for services and chains, on the orchestration worker.

Each answers ``{"ok": True, ...}`` or the error wire form (:func:`mobility.errors.to_wire`).
"""

from __future__ import annotations

import functools
from typing import Any

from mobility.chains import Chain
from mobility.deploying import Deployer
from mobility.errors import Invalid, MobilityError, to_wire
from workers.app import app
from workers.canvas import DEPLOY_CHAIN, DEPLOY_SERVICE, REMOVE_CHAIN, REMOVE_SERVICE
from workers.moves import engine


@functools.lru_cache(maxsize=1)
def deployer() -> Deployer:
    e = engine()
    return Deployer(registry=e.registry, federation=e.federation, wiring=e.wiring,
                    settings=e.settings)


@app.task(name=DEPLOY_SERVICE, soft_time_limit=120)
def deploy(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        svc = deployer().deploy(name=spec["name"], workload=spec["workload"],
                                params=dict(spec.get("params") or {}), cluster=spec["cluster"],
                                peers=list(spec.get("peers") or []))
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True, "service": svc.to_dict()}


@app.task(name=DEPLOY_CHAIN, soft_time_limit=300)
def deploy_chain(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        try:
            chain = Chain.from_dict(spec)
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise Invalid(f"malformed chain: {exc}") from exc
        services = deployer().deploy_chain(chain, rate=float(spec.get("rate", 1000.0)))
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True, "services": [s.to_dict() for s in services]}


@app.task(name=REMOVE_CHAIN, soft_time_limit=300)
def remove_chain(name: str) -> dict[str, Any]:
    try:
        deployer().remove_chain(name)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True}


@app.task(name=REMOVE_SERVICE, soft_time_limit=120)
def remove(name: str) -> dict[str, Any]:
    try:
        deployer().remove(name)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True}
