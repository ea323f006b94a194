"""/v1/services: deploy, list, show and remove services."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, Response

from api.deps import RegistryDep, SettingsDep
from api.schemas import (
    ERRORS,
    Accepted,
    LinkOut,
    NamePath,
    OperationOut,
    ServiceOut,
    ServiceRequest,
    answers,
)
from mobility import workloads
from mobility.errors import Conflict, Invalid, NotFound
from mobility.models import IMAGE_WORKLOAD, Link, PathHealth, Service
from workers import canvas

router = APIRouter(prefix="/v1/services", tags=["services"])


def _out(svc: Service, links: Mapping[str, Link], health: PathHealth | None) -> ServiceOut:
    ends = []
    for link_id in svc.links:
        if link_id not in links:
            raise NotFound(f"link {link_id} does not exist")  # as Registry.get_link
        link = links[link_id]
        mine = link.end_of(svc.name)
        ends.append(LinkOut(id=link.id, vni=link.vni, peer=link.peer_of(svc.name).service,
                            ifname=mine.ifname, mac=mine.mac, ip=mine.ip))
    return ServiceOut.of(svc, ends, health)


@router.get("")
def list_services(registry: RegistryDep) -> list[ServiceOut]:
    """Every service, with its links and path health read in two batches, not two reads per
    service (2,000 services: 4,000 round trips otherwise)."""
    services = registry.services()
    links = registry.links_named(i for s in services.values() for i in s.links)
    health = registry.healths_named(services)
    return [_out(s, links, health.get(s.name)) for s in services.values()]


@router.get("/{name}", responses=answers(404))
def get_service(name: NamePath, registry: RegistryDep) -> ServiceOut:
    svc = registry.get_service(name)
    if svc is None:
        raise NotFound(f"service {name!r} does not exist")
    links = registry.links_named(svc.links)
    return _out(svc, links, registry.get_health(svc.name))


@router.post("", status_code=202, responses=ERRORS)
def create_service(body: ServiceRequest, registry: RegistryDep, response: Response,
                   settings: SettingsDep) -> Accepted:
    """Queue the deploy (202); ``GET`` the operation until it ends. What can be checked here
    is: the container settings and an image not imported (422, naming the field), a name in
    use (409), an unknown cluster or peer (404)."""
    if body.faults and not settings.fault_injection:
        raise Invalid("fault injection is off (set MOBILITY_FAULT_INJECTION=1 on a test "
                      "deployment to use 'faults')")
    spec = body.model_dump()
    # What can be checked before anything is queued is checked here, naming the field.
    workload, container = workloads.check_container(body.workload, spec)
    if workload == IMAGE_WORKLOAD:
        if body.params:
            raise Invalid("params: a service with its own image takes 'command', 'args' and "
                          "'env', not 'params'")
        assert container.image is not None
        if registry.get_image(container.image) is None:
            raise Invalid(f"image: {container.image!r} is not imported (see GET /v1/images; "
                          "import with 'mobility image import FILE')")
    else:
        assert body.workload is not None
        workloads.check(body.workload, dict(body.params))
    if registry.get_service(body.name) is not None:
        raise Conflict(f"service {body.name!r} already exists")
    if registry.get_cluster(body.cluster) is None:
        raise NotFound(f"cluster {body.cluster!r} does not exist")
    for peer in body.peers:
        if registry.get_service(peer) is None:
            raise NotFound(f"peer {peer!r} does not exist")
    op = canvas.submit(registry, canvas.DEPLOY_SERVICE, target=body.name, args=[spec])
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))


@router.delete("/{name}", status_code=202, responses=ERRORS)
def delete_service(name: NamePath, registry: RegistryDep, response: Response) -> Accepted:
    """Queue the removal (202); refused with 409 while the service moves."""
    svc = registry.get_service(name)
    if svc is None:
        raise NotFound(f"service {name!r} does not exist")
    if svc.moving:
        raise Conflict(f"service {name!r} is moving (move {svc.moving}); wait for it to end")
    op = canvas.submit(registry, canvas.REMOVE_SERVICE, target=name, args=[name])
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))
