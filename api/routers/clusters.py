"""/v1/clusters: the clusters, their nodes and which instances run where; join and unjoin.

A join's (or an unjoin's) kubeconfig is checked here, before anything is queued
(:mod:`mobility.kubeconfigs`: inline credentials and an https server only; anything else is a
422 naming the field). The parsed credentials are stored sealed
(:mod:`mobility.store.credentials`) and the task gets only their id, so no secret travels in
the broker or shows in a task's arguments; the worker deletes them when it is done, and they
expire anyway once no task can run any more.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RegistryDep, SettingsDep
from api.schemas import ERRORS, Accepted, ClusterOut, Name, OperationOut
from mobility import kubeconfigs
from mobility.errors import Conflict, NotFound
from mobility.operations import Operation
from mobility.settings import Settings
from mobility.store import Registry
from mobility.store.credentials import Sealer
from workers import canvas

router = APIRouter(prefix="/v1/clusters", tags=["clusters"])
JOIN_TIMEOUT_S = 180.0
# The task reads the stored credentials when it starts, and a task not started by its expiry
# (JOIN_TIMEOUT_S) is dropped, redelivered or not: past that, with a wide margin, nothing can
# use them. The task deletes them when it ends; this TTL is for those no task ever took.
CREDENTIALS_TTL_S = int(2 * JOIN_TIMEOUT_S) + 60


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kubeconfig: Annotated[str, Field(min_length=1, max_length=1 << 20,
                                     description=(
        "the member's kubeconfig (YAML): an https server and inline credentials (token, or "
        "client-certificate-data and client-key-data; certificate-authority-data); exec, "
        "auth-provider, tokenFile and file paths are refused"))]
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


def _submit(registry: Registry, settings: Settings, task: str, *, name: str,
            kubeconfig: str | None, context: str | None) -> Operation:
    """Check and store the kubeconfig's credentials (if any), then queue ``task`` with their
    id: ``{"name", "credentials"}`` is all the task's arguments hold."""
    cred_id = None
    if kubeconfig is not None:
        creds = kubeconfigs.parse(kubeconfig, context=context)  # Invalid: a 422 naming a field
        cred_id = registry.put_credentials(creds, sealer=Sealer.from_settings(settings),
                                           ttl_s=CREDENTIALS_TTL_S)
    try:
        return canvas.submit(registry, task, target=name,
                             args=[{"name": name, "credentials": cred_id}],
                             expires_s=JOIN_TIMEOUT_S)
    except BaseException:
        if cred_id is not None:
            registry.delete_credentials(cred_id)
        raise


@router.post("", status_code=202, responses=ERRORS)
def join_cluster(body: JoinRequest, registry: RegistryDep, settings: SettingsDep,
                 response: Response) -> Accepted:
    """Queue the join (202); ``GET`` the operation until it ends."""
    if registry.get_cluster(body.name) is not None:
        raise Conflict(f"cluster {body.name!r} is already joined")
    op = _submit(registry, settings, canvas.JOIN_CLUSTER, name=body.name,
                 kubeconfig=body.kubeconfig, context=body.context)
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))


@router.delete("/{name}", status_code=202, responses=ERRORS)
def unjoin_cluster(name: str, registry: RegistryDep, settings: SettingsDep, response: Response,
                   body: Annotated[UnjoinRequest | None, Body()] = None) -> Accepted:
    """Queue the unjoin (202); ``GET`` the operation until it ends."""
    if registry.get_cluster(name) is None:
        raise NotFound(f"cluster {name!r} does not exist")
    op = _submit(registry, settings, canvas.UNJOIN_CLUSTER, name=name,
                 kubeconfig=body.kubeconfig if body else None,
                 context=body.context if body else None)
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))
