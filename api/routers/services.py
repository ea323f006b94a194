"""/v1/services: deploy, list, show and remove services."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import RegistryDep
from api.schemas import LinkOut, ServiceOut, ServiceRequest
from mobility.errors import NotFound, PhaseFailed
from mobility.models import Service
from mobility.store import Registry
from workers import canvas

router = APIRouter(prefix="/v1/services", tags=["services"])

DEPLOY_TIMEOUT_S = 90.0


def _out(registry: Registry, svc: Service) -> ServiceOut:
    links = []
    for link in registry.links_of(svc):
        mine = link.end_of(svc.name)
        links.append(LinkOut(id=link.id, vni=link.vni, peer=link.peer_of(svc.name).service,
                             ifname=mine.ifname, mac=mine.mac, ip=mine.ip))
    return ServiceOut.of(svc, links, registry.get_health(svc.name))


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
    canvas.run(canvas.DEPLOY_SERVICE, body.model_dump(), timeout=DEPLOY_TIMEOUT_S)
    svc = registry.get_service(body.name)
    if svc is None:
        raise PhaseFailed(f"service {body.name!r} was deployed but is not in the registry")
    return _out(registry, svc)


@router.delete("/{name}", status_code=204)
def delete_service(name: str, registry: RegistryDep) -> Response:
    if registry.get_service(name) is None:
        raise NotFound(f"service {name!r} does not exist")
    canvas.run(canvas.REMOVE_SERVICE, name, timeout=DEPLOY_TIMEOUT_S)
    return Response(status_code=204)
