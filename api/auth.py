"""Who may call what: bearer tokens with a role, checked on every route but ``/healthz``.

The role a route needs follows from its method and path, in one table (:func:`needed`): reads
need ``viewer``; moves, aborts, deploys, signals and policy evaluation ``operator``; clusters,
policies, the rebalancer's configuration and schedule, move subscriptions and tokens
``admin``. No token, an unknown, revoked or expired one: 401. A role too low: 403. A
state-changing request that carries an ``Origin`` (a browser) not listed in
``MOBILITY_API_ORIGINS`` nor the API's own (its dashboard, ``/ui``): 403, so a web page
cannot drive the API with a token it was never given. ``/healthz`` stays open: load balancers
and probes carry no token, and it says only "ok" or "degraded".
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import RegistryDep, SettingsDep
from mobility import tokens
from mobility.tokens import Role, Token

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="a token from `mobility token create`")

READS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN_PATHS = ("/v1/clusters", "/v1/policies", "/v1/rebalance/config",
               "/v1/rebalance/schedule", "/v1/tokens", "/v1/images", "/v1/subscriptions")
OPERATOR_PATHS = ("/v1/policies/evaluate",)
RATE_WINDOW_S = 60


def needed(method: str, path: str) -> Role:
    """The role a request needs (``path``: the route's template, e.g. /v1/services/{name})."""
    if path.startswith("/v1/tokens") or path.endswith("/archive"):
        return Role.ADMIN  # tokens; an image's archive (its files, perhaps someone's code)
    if method in READS:
        return Role.VIEWER
    if path.startswith(OPERATOR_PATHS):
        return Role.OPERATOR
    if path.startswith(ADMIN_PATHS):
        return Role.ADMIN
    return Role.OPERATOR


def same_origin(request: Request, origin: str) -> bool:
    """Whether ``origin`` is the API's own (the dashboard it serves at ``/ui``): a same-origin
    request is not cross-site, so it needs no listing. Compared exactly with the scheme the
    server sees and the ``Host`` the request came to, a default port left out as browsers do;
    an origin with a path, a user or another port is not the same."""
    host = request.headers.get("host")
    if not host:
        return False
    scheme = request.url.scheme
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    if default and host.endswith(default):
        host = host[: -len(default)]
    return origin.lower() == f"{scheme}://{host}".lower()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail,
                         headers={"WWW-Authenticate": 'Bearer realm="service-mobility"'})


def authorize(request: Request, registry: RegistryDep, settings: SettingsDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
              ) -> Token:
    """The caller's token, if it may make this request; 401, 403 or 429 otherwise."""
    method = request.method
    if method not in READS:
        origin = request.headers.get("origin")
        if (origin is not None and origin not in settings.api_origins
                and not same_origin(request, origin)):
            raise HTTPException(status_code=403,
                                detail=f"requests from origin {origin!r} are not allowed")
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is needed (Authorization: Bearer <token>)")
    parsed = tokens.parse(credentials.credentials)
    token = registry.get_token(parsed[0]) if parsed else None
    if parsed is None or token is None or not token.matches(parsed[1]):
        raise _unauthorized("unknown or revoked token")
    if token.expired(time.time()):
        raise _unauthorized("the token has expired")
    route = request.scope.get("route")
    path = str(getattr(route, "path", request.url.path))
    role = needed(method, path)
    if not token.role.allows(role):
        raise HTTPException(status_code=403,
                            detail=f"{method} {path} needs the {role} role; this token is "
                                   f"{token.role}")
    if method == "POST" and path == "/v1/signals":
        count = registry.hit(token.id, "signals", window_s=RATE_WINDOW_S)
        if count > settings.signals_per_minute:
            raise HTTPException(status_code=429, headers={"Retry-After": str(RATE_WINDOW_S)},
                                detail=f"at most {settings.signals_per_minute} signal batches "
                                       "a minute per token")
    request.state.token = token
    return token


Authorized = Depends(authorize)
