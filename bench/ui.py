"""The dashboard's first contentful paint with 200 services registered, from Chromium's timing.

Usage: .venv/bin/python -m bench.ui [--services 200] [--loads 7] [--screenshot PNG]

Starts its own Redis (loopback, a password in a 0600 file, no argv secret) and the real API
app under uvicorn on a free loopback port, registers two clusters of two nodes and
``--services`` services (each with a path-health report) straight in the registry, mints a
viewer token, and loads ``/ui`` ``--loads`` times in Debian's chromium (Playwright), each in a
fresh tab of a new empty profile with the token already in the tab's sessionStorage, as after
signing in. Per load it reads ``first-contentful-paint`` from
``performance.getEntriesByName`` and the page's own ``mobility-dashboard-drawn`` mark (all
clusters, services, graph and moves drawn from the API's answers), and checks every service
was drawn.

The baseline, from the same run and the same server: the FCP of a minimal static page (one
paragraph, the dashboard's security headers) that the bench adds to the same app, loaded the
same way, alternating with the dashboard. Prints one JSON object: ``fcp_ms_p50``/``max``,
``drawn_ms_p50``/``max``, ``baseline_fcp_ms_p50``/``max``, ``fcp_to_baseline_ratio`` and
whether the 1 s target is met. Nothing is left behind: the server, Redis and the browser are
this process's own and end with it; the temporary directory is removed.

No lab namespace is needed: what is measured is the page, its assets and the API's reads over
loopback, so the bench leaves the lab locks to the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

from api.app import create_app
from api.routers.ui import SECURITY_HEADERS
from bench.labs import start_logging
from bench.servers import free_port, redis_server, wait_port
from mobility import tokens
from mobility.models import Cluster, Instance, Node, PathHealth, Service
from mobility.settings import Settings
from mobility.store import Registry
from mobility.tokens import Role

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TARGET_FCP_MS = 1000.0
BLANK = b"<!doctype html><html lang=en><meta charset=utf-8><title>baseline</title>" \
        b"<p>baseline page</p></html>"
HEALTH_TTL_S = 3600


def register(reg: Registry, *, services: int) -> None:
    """Two clusters of two nodes and ``services`` services spread over their nodes."""
    clusters = []
    for c, name in enumerate(("core", "edge")):
        nodes = tuple(Node(name=f"n{i}", cluster=name, underlay_ip=f"198.18.{c + 1}.{10 + i}")
                      for i in (1, 2))
        clusters.append(Cluster(name=name, nodes=nodes))
        reg.put_cluster(clusters[-1])
    now = time.time()
    for i in range(services):
        cluster = clusters[i % 2]
        node = cluster.nodes[(i // 2) % 2]
        name = f"svc-{i:04d}"
        reg.put_service(Service(name=name, workload="echo",
                                instance=Instance(cluster=cluster.name, node=node.name,
                                                  pod=f"{name}-pod")))
        reg.put_health(name, PathHealth(ok=True, checked_at=now, node=f"{cluster.name}."
                                        f"{node.name}"), ttl_s=HEALTH_TTL_S)


def bench_app(settings: Settings) -> FastAPI:
    """The API app, plus the baseline page: served by the same server, the same way."""
    app = create_app(settings)

    def blank() -> Response:
        return Response(content=BLANK, media_type="text/html; charset=utf-8",
                        headers=dict(SECURITY_HEADERS))

    app.add_api_route("/bench/blank", blank, methods=["GET"], include_in_schema=False)
    return app


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="bench-ui-api", daemon=True)
    thread.start()
    try:
        wait_port(port, 20)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


FCP_JS = """() => new Promise((resolve) => {
  const now = performance.getEntriesByName('first-contentful-paint');
  if (now.length) { resolve(now[0].startTime); return; }
  new PerformanceObserver((list, obs) => {
    for (const e of list.getEntries()) {
      if (e.name === 'first-contentful-paint') { obs.disconnect(); resolve(e.startTime); }
    }
  }).observe({ type: 'paint', buffered: true });
})"""

DRAWN_JS = "() => performance.getEntriesByName('mobility-dashboard-drawn').length > 0"


def load(context: Any, url: str, *, services: int | None) -> dict[str, float]:
    """One load in a fresh tab: its FCP and, for the dashboard, when it had drawn it all."""
    page = context.new_page()
    try:
        page.goto(url, wait_until="load", timeout=30_000)
        out = {"fcp_ms": float(page.evaluate(FCP_JS))}
        if services is not None:
            page.wait_for_function(DRAWN_JS, timeout=30_000)
            out["drawn_ms"] = float(page.evaluate(
                "() => performance.getEntriesByName('mobility-dashboard-drawn')[0].startTime"))
            drawn = int(page.evaluate("() => document.querySelectorAll('#graph g.svc').length"))
            if drawn != services:
                raise RuntimeError(f"the dashboard drew {drawn} services, not {services}")
        return out
    finally:
        page.close()


def measure(*, base: str, token: str, services: int, loads: int, profile: Path,
            screenshot: Path | None = None) -> dict[str, list[float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from playwright.sync_api import sync_playwright
    samples: dict[str, list[float]] = {"fcp": [], "drawn": [], "baseline": []}
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1280, "height": 800})
        try:
            # as after signing in: the token in the tab's session storage, before any script
            context.add_init_script(
                f"sessionStorage.setItem('mobility.token', {json.dumps(token)});")
            load(context, f"{base}/bench/blank", services=None)  # warm-up, not counted
            load(context, f"{base}/ui", services=services)
            for i in range(loads):
                b = load(context, f"{base}/bench/blank", services=None)
                u = load(context, f"{base}/ui", services=services)
                samples["baseline"].append(b["fcp_ms"])
                samples["fcp"].append(u["fcp_ms"])
                samples["drawn"].append(u["drawn_ms"])
                log.info("load %d: fcp %.1f ms, drawn %.1f ms, baseline fcp %.1f ms", i + 1,
                         u["fcp_ms"], u["drawn_ms"], b["fcp_ms"])
            if screenshot is not None:  # after the timed loads: it times nothing
                page = context.new_page()
                page.goto(f"{base}/ui", wait_until="load")
                page.wait_for_function(DRAWN_JS, timeout=30_000)
                page.screenshot(path=str(screenshot))  # the first screen, as a person sees it
                page.close()
        finally:
            context.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="save a full-page screenshot of the dashboard here at the end")
    args = parser.parse_args(argv)
    start_logging()
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} is missing: scripts/setup.sh installs chromium")
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp, redis_server(Path(tmp)) as url:
        reg = Registry.from_url(url)
        register(reg, services=args.services)
        record, token = tokens.mint(role=Role.VIEWER, name="bench ui")
        reg.put_token(record)
        app = bench_app(Settings(redis_url=url))  # type: ignore[arg-type]
        with serving(app) as base:
            samples = measure(base=base, token=token, services=args.services,
                              loads=args.loads, profile=Path(tmp) / "profile",
                              screenshot=args.screenshot)
        reg.r.close()

    def p50(key: str) -> float:
        return round(statistics.median(samples[key]), 1)

    def top(key: str) -> float:
        return round(max(samples[key]), 1)

    result = {
        "bench": "ui", "services": args.services, "loads": args.loads,
        "fcp_ms_p50": p50("fcp"), "fcp_ms_max": top("fcp"),
        "drawn_ms_p50": p50("drawn"), "drawn_ms_max": top("drawn"),
        "baseline_fcp_ms_p50": p50("baseline"), "baseline_fcp_ms_max": top("baseline"),
        "fcp_to_baseline_ratio": round(p50("fcp") / p50("baseline"), 2),
        "target_fcp_ms": TARGET_FCP_MS, "target_met": top("fcp") <= TARGET_FCP_MS,
        "browser": "Debian chromium, headless", "viewport": "1280x800",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
