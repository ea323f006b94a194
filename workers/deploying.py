"""Deploy and removal tasks for services and chains, on the orchestration worker.

Each runs a recorded operation (``op_id``, see :mod:`workers.operating`) and answers
``{"ok": True, "location": ...}`` or the error wire form (:func:`mobility.errors.to_wire`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from mobility import workloads
from mobility.chains import Chain
from mobility.deploying import Deployer
from mobility.errors import Invalid, MobilityError, Wire, to_wire
from workers.app import app
from workers.canvas import DEPLOY_CHAIN, DEPLOY_SERVICE, REAP_JOBS, REMOVE_CHAIN, REMOVE_SERVICE
from workers.moves import engine
from workers.operating import run_operation


@functools.lru_cache(maxsize=1)
def deployer() -> Deployer:
    e = engine()
    return Deployer(registry=e.registry, federation=e.federation, wiring=e.wiring,
                    settings=e.settings)


@app.task(name=DEPLOY_SERVICE)
def deploy(op_id: str, spec: Mapping[str, object]) -> Wire:
    return run_operation(op_id, lambda: _deploy(spec))


def _deploy(spec: Mapping[str, object]) -> Wire:
    try:
        params = spec.get("params") or {}
        peers = spec.get("peers") or []
        if not isinstance(params, Mapping) or not isinstance(peers, list):
            raise Invalid("params must be a mapping and peers a list")
        faults = spec.get("faults") or []
        if not isinstance(faults, list):
            raise Invalid("faults must be a list")
        raw_workload = spec.get("workload")
        workload, container = workloads.check_container(
            None if raw_workload is None else str(raw_workload), spec)
        svc = deployer().deploy(name=str(spec["name"]), workload=workload,
                                params=dict(params), cluster=str(spec["cluster"]),
                                peers=[str(p) for p in peers],
                                faults=[str(f) for f in faults], container=container)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True, "location": f"/v1/services/{svc.name}"}


@app.task(name=DEPLOY_CHAIN)
def deploy_chain(op_id: str, spec: Mapping[str, object]) -> Wire:
    return run_operation(op_id, lambda: _deploy_chain(spec))


def _deploy_chain(spec: Mapping[str, object]) -> Wire:
    try:
        try:
            chain = Chain.from_dict(dict(spec))
            rate = float(str(spec.get("rate", 1000.0)))
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise Invalid(f"malformed chain: {exc}") from exc
        services = deployer().deploy_chain(chain, rate=rate)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True, "location": f"/v1/chains/{chain.name}",
            "services": [s.name for s in services]}


@app.task(name=REMOVE_CHAIN)
def remove_chain(op_id: str, name: str) -> Wire:
    return run_operation(op_id, lambda: _remove_chain(name))


def _remove_chain(name: str) -> Wire:
    try:
        deployer().remove_chain(name)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True}


@app.task(name=REAP_JOBS)
def reap_jobs() -> list[str]:
    """Finish or undo deploys and removals whose worker died (beat, every few seconds)."""
    return deployer().reap_jobs()


@app.task(name=REMOVE_SERVICE)
def remove(op_id: str, name: str) -> Wire:
    return run_operation(op_id, lambda: _remove(name))


def _remove(name: str) -> Wire:
    try:
        deployer().remove(name)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True}
