"""/v1/operations: long operations (deploys, removals, joins) that requests queue and callers
poll, so no API request waits for a worker."""

from __future__ import annotations

from fastapi import APIRouter, Path

from api.deps import RegistryDep
from api.schemas import OperationOut, answers

router = APIRouter(prefix="/v1/operations", tags=["operations"])

OpId = Path(pattern=r"^op-[0-9a-f]{16}$")


@router.get("/{op_id}", responses=answers(404))
def get_operation(registry: RegistryDep, op_id: str = OpId) -> OperationOut:
    return OperationOut.of(registry.get_operation(op_id))
