"""/v1/tokens: API tokens (admin). A token is shown once, when made; only its digest is kept."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RegistryDep
from api.schemas import ERRORS
from mobility import tokens
from mobility.errors import NotFound
from mobility.tokens import Role, Token

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    name: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9 ._@-]*$")] = ""
    ttl_s: Annotated[float | None, Field(ge=60, le=tokens.MAX_TTL_S,
                                         allow_inf_nan=False)] = None


class TokenOut(BaseModel):
    id: str
    role: Role
    name: str
    created_at: float
    expires_at: float | None

    @classmethod
    def of(cls, t: Token) -> TokenOut:
        return cls(id=t.id, role=t.role, name=t.name, created_at=t.created_at,
                   expires_at=t.expires_at)


class NewToken(TokenOut):
    token: str = Field(description="the token itself: shown this once, never again")


@router.post("", status_code=201)
def create_token(body: TokenRequest, registry: RegistryDep) -> NewToken:
    record, secret = tokens.mint(role=body.role, name=body.name, ttl_s=body.ttl_s)
    registry.put_token(record)
    return NewToken(**TokenOut.of(record).model_dump(), token=secret)


@router.get("")
def list_tokens(registry: RegistryDep) -> list[TokenOut]:
    return [TokenOut.of(t) for t in registry.tokens()]


@router.delete("/{token_id}", status_code=204, responses=ERRORS)
def revoke_token(registry: RegistryDep,
                 token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]) -> Response:
    if not registry.revoke_token(token_id):
        raise NotFound(f"token {token_id!r} does not exist")
    return Response(status_code=204)
