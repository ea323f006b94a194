"""/v1/chains: service chains (client -> middleboxes -> server) deployed as one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RegistryDep
from api.schemas import ERRORS, Accepted, Name, NamePath, OperationOut, answers
from mobility import chains
from mobility.chains import Chain
from mobility.errors import Conflict, NotFound
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


@router.post("", status_code=202, responses=ERRORS)
def create_chain(body: ChainRequest, registry: RegistryDep, response: Response) -> Accepted:
    """Queue the chain's deploy (202) once what can be checked here holds: the chain's shape
    (422), its clusters (404), its name and its services' names free (409)."""
    chain = chains.validate(Chain.from_dict(body.model_dump()))
    for e in chain.elements:
        if registry.get_cluster(e.cluster) is None:
            raise NotFound(f"element {e.name}: cluster {e.cluster!r} does not exist")
    if registry.get_chain(chain.name) is not None:
        raise Conflict(f"chain {chain.name!r} already exists")
    taken = [s for s in chain.services if registry.get_service(s) is not None]
    if taken:
        raise Conflict(f"services {taken} already exist")
    op = canvas.submit(registry, canvas.DEPLOY_CHAIN, target=chain.name,
                       args=[body.model_dump()], expires_s=600)
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))


@router.get("")
def list_chains(registry: RegistryDep) -> list[ChainOut]:
    return [_out(c) for c in registry.chains()]


@router.get("/{name}", responses=answers(404))
def get_chain(name: NamePath, registry: RegistryDep) -> ChainOut:
    chain = registry.get_chain(name)
    if chain is None:
        raise NotFound(f"chain {name!r} does not exist")
    return _out(chain)


@router.delete("/{name}", status_code=202, responses=ERRORS)
def delete_chain(name: NamePath, registry: RegistryDep, response: Response) -> Accepted:
    if registry.get_chain(name) is None:
        raise NotFound(f"chain {name!r} does not exist")
    op = canvas.submit(registry, canvas.REMOVE_CHAIN, target=name, args=[name],
                       expires_s=600)
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))
