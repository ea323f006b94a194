"""/ui: the Federator's view, a static page that reads the API with the token a person types.

The page and its assets hold no data, so they are served without a token (as ``/healthz``);
every data call the page makes carries the token, which the page keeps in ``sessionStorage``
only. An asset's name in a path is looked up in :data:`ASSETS`, a fixed table, and never used
as a path itself. Every answer carries a strict Content-Security-Policy (only this origin, no
inline script or style, no framing), so an injected string in a service's name cannot run.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

router = APIRouter(tags=["ui"], include_in_schema=False)

# name in the URL -> (file in api/ui/static, media type): the whole whitelist
ASSETS: dict[str, tuple[str, str]] = {
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
}
INDEX = ("index.html", "text/html; charset=utf-8")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(filename: str) -> bytes:
    return (resources.files("api.ui") / "static" / filename).read_bytes()


def _answer(filename: str, media_type: str) -> Response:
    return Response(content=_read(filename), media_type=media_type,
                    headers=dict(SECURITY_HEADERS))


@router.get("/ui", response_model=None)
def index() -> Response:
    return _answer(*INDEX)


@router.get("/ui/", response_model=None)
def index_slash() -> RedirectResponse:
    return RedirectResponse(url="/ui", status_code=308, headers=dict(SECURITY_HEADERS))


@router.get("/ui/static/{asset}", response_model=None)
def asset(asset: str) -> Response:
    found = ASSETS.get(asset)
    if found is None:  # the table is the whole whitelist: the name is never a path
        return Response(content=b"no such asset\n", status_code=404, media_type="text/plain",
                        headers=dict(SECURITY_HEADERS))
    return _answer(*found)
