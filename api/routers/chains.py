"""/v1/chains: service chains (client -> middleboxes -> server) deployed as one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RegistryDep
from api.schemas import Name
from mobility.chains import Chain
from mobility.errors import NotFound
from workers import canvas

router = APIRouter(prefix="/v1/chains", tags=["chains"])

ElementName = Annotated[str, Field(min_length=1, max_length=11, pattern=r"^[a-z][a-z0-9-]*$")]


class ElementSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ElementName
    workload: Annotated[str, Field(pattern=r"^(probe|middlebox|echo)$")]
    cluster: Name


class ChainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ElementName
    elements: list[ElementSpec] = Field(min_length=2, max_length=8)
    rate: float = Field(default=1000.0, gt=0, le=20000)


class ChainOut(BaseModel):
    name: str
    elements: list[ElementSpec]
    services: list[str]


def _out(chain: Chain) -> ChainOut:
    elements = [ElementSpec(name=e.name, workload=e.workload, cluster=e.cluster)
                for e in chain.elements]
    return ChainOut(name=chain.name, elements=elements, services=chain.services)


@router.post("", status_code=201)
def create_chain(body: ChainRequest, registry: RegistryDep) -> ChainOut:
    canvas.run(canvas.DEPLOY_CHAIN, body.model_dump(), timeout=300)
    chain = registry.get_chain(body.name)
    if chain is None:
        raise NotFound(f"chain {body.name!r} was deployed but is not in the registry")
    return _out(chain)


@router.get("")
def list_chains(registry: RegistryDep) -> list[ChainOut]:
    return [_out(c) for c in registry.chains()]


@router.get("/{name}")
def get_chain(name: str, registry: RegistryDep) -> ChainOut:
    chain = registry.get_chain(name)
    if chain is None:
        raise NotFound(f"chain {name!r} does not exist")
    return _out(chain)


@router.delete("/{name}", status_code=204)
def delete_chain(name: str, registry: RegistryDep) -> Response:
    if registry.get_chain(name) is None:
        raise NotFound(f"chain {name!r} does not exist")
    canvas.run(canvas.REMOVE_CHAIN, name, timeout=300)
    return Response(status_code=204)
