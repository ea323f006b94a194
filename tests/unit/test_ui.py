"""The dashboard's static serving and the same-origin rule it relies on, without services.

Aspects: ``/ui`` and its two assets are served without a token, with a strict
Content-Security-Policy (``default-src 'self'``, no inline script, ``frame-ancestors 'none'``),
``nosniff`` and the right media types; an asset name outside the fixed table is a 404 that
names no file, a path-like name never reaches the disk; the page loads its script from a file
(no inline ``<script>`` body) and every asset is in the package; a state-changing request from
the API's own origin passes the origin check (then needs a token: 401) while a foreign origin,
the same host on another port or scheme, and a look-alike host are refused (403);
``same_origin`` leaves the default port out as browsers do.
"""

from __future__ import annotations

import re
import warnings
from importlib import resources

import pytest
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import same_origin
from api.routers.ui import ASSETS
from mobility.settings import Settings

# Nothing listens there: the origin check and the missing token answer before Redis is asked.
UNREACHABLE_REDIS = "redis://127.0.0.1:9/0"


@pytest.fixture
def client() -> TestClient:
    app = create_app(Settings(redis_url=UNREACHABLE_REDIS))  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1:8700", raise_server_exceptions=False)


def csp_of(headers: dict[str, str] | object) -> dict[str, str]:
    value = str(headers["content-security-policy"])  # type: ignore[index]
    return {d.split()[0]: d.strip() for d in value.split(";") if d.strip()}


@pytest.mark.parametrize(("path", "media"), [("/ui", "text/html"),
                                             ("/ui/static/app.js", "text/javascript"),
                                             ("/ui/static/app.css", "text/css")])
def test_page_and_assets_need_no_token_and_carry_strict_headers(client: TestClient, path: str,
                                                                media: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media)
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = csp_of(r.headers)
    assert csp["default-src"] == "default-src 'self'"
    assert csp["script-src"] == "script-src 'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert csp["frame-ancestors"] == "frame-ancestors 'none'"
    assert "unsafe" not in r.headers["content-security-policy"]


@pytest.mark.parametrize("name", ["index.html", "app.js.map", "__init__.py", "APP.JS",
                                  "app.js%00"])
def test_an_asset_outside_the_table_is_a_404(client: TestClient, name: str) -> None:
    r = client.get(f"/ui/static/{name}")
    assert r.status_code == 404
    assert r.text == "no such asset\n"
    assert "content-security-policy" in r.headers


@pytest.mark.parametrize("path", ["/ui/static/..%2F..%2Fapi%2Fauth.py",
                                  "/ui/static/../../api/auth.py", "/ui/static/", "/ui/x"])
def test_a_path_like_name_never_reaches_the_disk(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert "import" not in r.text and "bearer" not in r.text.lower()


def test_the_page_has_no_inline_script_and_ships_its_assets(client: TestClient) -> None:
    html = client.get("/ui").text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts and all('src="/ui/static/' in attrs and body.strip() == ""
                           for attrs, body in scripts)
    assert " style=" not in html and "on" + "click=" not in html
    for url in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html):
        assert client.get(url).status_code == 200, url
    static = resources.files("api.ui") / "static"
    for filename, _ in ASSETS.values():
        assert (static / filename).is_file()
    # nothing comes from elsewhere: no CDN, no internet
    assert "http://" not in html.replace('"http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_same_origin_state_change_passes_the_origin_check(client: TestClient) -> None:
    r = client.post("/v1/moves", json={"service": "a", "to_cluster": "b"},
                    headers={"Origin": "http://127.0.0.1:8700"})
    assert r.status_code == 401  # past the origin check; a token is still needed


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:8701",
                                    "https://127.0.0.1:8700", "http://127.0.0.1:8700.evil",
                                    "http://127.0.0.1", "null"])
def test_other_origins_are_still_refused(client: TestClient, origin: str) -> None:
    r = client.post("/v1/moves", json={"service": "a", "to_cluster": "b"},
                    headers={"Origin": origin})
    assert r.status_code == 403
    assert "origin" in r.json()["detail"]


def request_to(host: str | None, scheme: str = "http") -> Request:
    headers = [(b"host", host.encode())] if host is not None else []
    return Request({"type": "http", "method": "POST", "path": "/v1/moves", "headers": headers,
                    "scheme": scheme, "server": ("127.0.0.1", 80), "query_string": b""})


def test_same_origin_leaves_the_default_port_out() -> None:
    assert same_origin(request_to("mob.example:443", "https"), "https://mob.example")
    assert same_origin(request_to("mob.example:80"), "http://mob.example")
    assert same_origin(request_to("mob.example:8700"), "http://MOB.example:8700")
    assert not same_origin(request_to("mob.example:8700"), "http://mob.example")
    assert not same_origin(request_to("mob.example"), "https://mob.example")
    assert not same_origin(request_to(None), "http://mob.example")
    assert not same_origin(request_to("mob.example"), "http://mob.example/ui")
