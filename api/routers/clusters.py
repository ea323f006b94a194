"""/v1/clusters: the clusters, their nodes, and which instances run where."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RegistryDep
from api.schemas import ClusterOut

router = APIRouter(prefix="/v1/clusters", tags=["clusters"])


@router.get("")
def list_clusters(registry: RegistryDep) -> list[ClusterOut]:
    services = registry.services()
    return [ClusterOut.of(c, services) for c in registry.clusters().values()]
