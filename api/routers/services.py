"""/v1/services: deploy, list, show and remove services."""

from __future__ import annotations

from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import APIRouter, Response

from api.deps import RegistryDep
from api.errors import ApiError
from api.schemas import LinkOut, ServiceOut, ServiceRequest
from mobility.errors import NodeUnavailable, NotFound
from mobility.models import Service
from mobility.registry import Registry
from workers import canvas

router = APIRouter(prefix="/v1/services", tags=["services"])

DEPLOY_TIMEOUT_S = 90.0
KIND_STATUS = {"not_found": 404, "conflict": 409, "invalid": 422, "failed": 502}


def _out(registry: Registry, svc: Service) -> ServiceOut:
    links = []
    for link in registry.links_of(svc):
        mine = link.end_of(svc.name)
        links.append(LinkOut(id=link.id, vni=link.vni, peer=link.peer_of(svc.name).service,
                             ifname=mine.ifname, mac=mine.mac, ip=mine.ip))
    return ServiceOut.of(svc, links, registry.get_health(svc.name))


def _run(task: str, *args: Any, timeout: float = DEPLOY_TIMEOUT_S) -> dict[str, Any]:
    """Run a task on the orchestration worker and wait; its error kinds map to HTTP."""
    try:
        answer: dict[str, Any] = canvas.run(task, *args, timeout=timeout)
    except CeleryTimeout as exc:
        raise NodeUnavailable(f"no orchestration worker answered within {timeout:g} s; "
                              "is one running?") from exc
    if not answer.get("ok"):
        raise ApiError(KIND_STATUS.get(str(answer.get("kind")), 502), str(answer.get("error")))
    return answer


@router.get("")
def list_services(registry: RegistryDep) -> list[ServiceOut]:
    return [_out(registry, s) for s in registry.services().values()]


@router.get("/{name}")
def get_service(name: str, registry: RegistryDep) -> ServiceOut:
    svc = registry.get_service(name)
    if svc is None:
        raise NotFound(f"service {name!r} does not exist")
    return _out(registry, svc)


@router.post("", status_code=201)
def create_service(body: ServiceRequest, registry: RegistryDep) -> ServiceOut:
    _run("services.deploy", body.model_dump())
    svc = registry.get_service(body.name)
    if svc is None:
        raise ApiError(502, f"service {body.name!r} was deployed but is not in the registry")
    return _out(registry, svc)


@router.delete("/{name}", status_code=204)
def delete_service(name: str, registry: RegistryDep) -> Response:
    if registry.get_service(name) is None:
        raise NotFound(f"service {name!r} does not exist")
    _run("services.remove", name)
    return Response(status_code=204)
