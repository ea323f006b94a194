"""The API client the CLI, the benches and the tests use: the caller's token on every request,
and long operations followed to their end.

A deploy, a removal or a join answers 202 with an operation (no request waits for a worker);
this client polls the operation and hands back what a caller wants to see: the resource made
(``201``), ``204`` for a removal, or the error the operation ended with, as the status the API
gives that error kind. ``follow=False`` gives the raw 202.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from mobility.settings import Settings, get_settings

# the status an operation's error kind stands for (as api/errors.py maps it)
KIND_STATUS = {"not_found": 404, "conflict": 409, "invalid": 422, "stale": 409,
               "federation": 502, "failed": 502}
POLL_S = 0.1


def find_token(settings: Settings | None = None) -> str:
    """The caller's token: ``MOBILITY_TOKEN``, else the file ``MOBILITY_TOKEN_FILE`` names
    (the embedded stack writes one for its own CLI), else none."""
    settings = settings or get_settings()
    token = settings.token.get_secret_value()
    if token:
        return token
    path = settings.token_file or os.environ.get("MOBILITY_TOKEN_FILE", "")
    if path and Path(path).exists():
        return Path(path).read_text().strip()
    return ""


class ApiClient(httpx.Client):
    def __init__(self, base_url: str, *, token: str, timeout: float = 60.0,
                 follow: bool = True, op_timeout: float = 600.0, **kw: Any) -> None:
        headers = dict(kw.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        super().__init__(base_url=base_url, timeout=timeout, headers=headers, **kw)
        self.follow = follow
        self.op_timeout = op_timeout

    def request(self, method: str, url: httpx.URL | str, **kw: Any) -> httpx.Response:
        resp = super().request(method, url, **kw)
        if not self.follow or resp.status_code != 202:
            return resp
        try:
            body = resp.json()
        except ValueError:
            return resp
        if not isinstance(body, dict) or "operation" not in body:
            return resp  # a move: its own resource, followed through its events
        return self._follow(method, resp, body["operation"])

    def _follow(self, method: str, accepted: httpx.Response,
                op: dict[str, Any]) -> httpx.Response:
        deadline = time.monotonic() + self.op_timeout
        link = op["links"]["self"]
        while op["status"] not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                return httpx.Response(504, json={"detail": f"operation {op['id']} still "
                                                           f"{op['status']}"},
                                      request=accepted.request)
            time.sleep(POLL_S)
            got = super().request("GET", link)
            if got.status_code != 200:
                return got
            op = got.json()
        if op["status"] == "failed":
            return httpx.Response(KIND_STATUS.get(str(op.get("error_kind")), 502),
                                  json={"detail": op.get("error"), "operation": op},
                                  request=accepted.request)
        location = (op.get("result") or {}).get("location")
        if method.upper() == "DELETE" or not location:
            return httpx.Response(204, request=accepted.request)
        got = super().request("GET", location)
        if got.status_code != 200:
            return got
        return httpx.Response(201, json=got.json(), request=accepted.request)


def api_client(*, base_url: str | None = None, token: str | None = None,
               timeout: float = 60.0, follow: bool = True) -> ApiClient:
    """A client for the API the settings name, with the caller's token."""
    settings = get_settings()
    return ApiClient(base_url or settings.api_url,
                     token=find_token(settings) if token is None else token,
                     timeout=timeout, follow=follow)
