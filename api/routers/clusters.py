"""/v1/clusters: the clusters, their nodes and which instances run where; join and unjoin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RegistryDep
from api.schemas import ERRORS, Accepted, ClusterOut, Name, OperationOut
from mobility.errors import Conflict, NotFound
from workers import canvas

router = APIRouter(prefix="/v1/clusters", tags=["clusters"])
JOIN_TIMEOUT_S = 180.0


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kubeconfig: Annotated[str, Field(min_length=1, max_length=1 << 20,
                                     description="the member's kubeconfig (YAML)")]
    context: str | None = None


class UnjoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kubeconfig: str | None = Field(default=None, max_length=1 << 20, description=(
        "the member's admin kubeconfig, to remove what join made there too; without it only "
        "the host side is cleaned"))
    context: str | None = None


@router.get("")
def list_clusters(registry: RegistryDep) -> list[ClusterOut]:
    services = registry.services()
    return [ClusterOut.of(c, services) for c in registry.clusters().values()]


@router.get("/{name}", responses=ERRORS)
def get_cluster(name: str, registry: RegistryDep) -> ClusterOut:
    cluster = registry.get_cluster(name)
    if cluster is None:
        raise NotFound(f"cluster {name!r} does not exist")
    return ClusterOut.of(cluster, registry.services())


@router.post("", status_code=202, responses=ERRORS)
def join_cluster(body: JoinRequest, registry: RegistryDep, response: Response) -> Accepted:
    """Queue the join (202); ``GET`` the operation until it ends."""
    if registry.get_cluster(body.name) is not None:
        raise Conflict(f"cluster {body.name!r} is already joined")
    op = canvas.submit(registry, canvas.JOIN_CLUSTER, target=body.name,
                       args=[body.model_dump()], expires_s=JOIN_TIMEOUT_S)
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))


@router.delete("/{name}", status_code=202, responses=ERRORS)
def unjoin_cluster(name: str, registry: RegistryDep, response: Response,
                   body: Annotated[UnjoinRequest | None, Body()] = None) -> Accepted:
    """Queue the unjoin (202); ``GET`` the operation until it ends."""
    if registry.get_cluster(name) is None:
        raise NotFound(f"cluster {name!r} does not exist")
    spec = {"name": name, **(body.model_dump() if body else {})}
    op = canvas.submit(registry, canvas.UNJOIN_CLUSTER, target=name, args=[spec],
                       expires_s=JOIN_TIMEOUT_S)
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))
