"""The dashboard in a real browser (Debian's chromium driven by Playwright) on the lab stack.

Aspects: ``/ui`` asks for a token and keeps it in sessionStorage only (no cookie, no
localStorage); with an operator token it shows both clusters, their nodes, the demo service on
its node, its link to its client drawn in the graph and its path health; the move button is
reached with Tab alone, shows a visible focus ring and starts the move with Enter; the move's
timeline, fed by the SSE stream read with fetch, reaches ``succeeded`` with all six phases
done, and the service is then drawn in its new cluster; the page stays readable on a phone
(no sideways scrolling, the move controls visible); no script error and no CSP violation.
Screenshots of each step land in the test's own directory. Chromium missing is a failure.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.stack import Stack
from mobility import tokens
from mobility.store import Registry
from mobility.tokens import Role

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVICE, CLIENT = "echo-ui", "client-ui"
MOVE_TIMEOUT_MS = 120_000


@pytest.fixture
def operator_token(lab_stack: Stack) -> Iterator[str]:
    reg = Registry.from_url(lab_stack.redis_url())
    record, secret = tokens.mint(role=Role.OPERATOR, name="dashboard e2e")
    reg.put_token(record)
    yield secret
    reg.revoke_token(record.id)
    reg.r.close()


@pytest.fixture
def demo_service(lab_stack: Stack) -> Iterator[str]:
    """The demo's echo service in ``core`` with a probe client linked to it."""
    with lab_stack.api_client(timeout=120) as api:
        r = api.post("/v1/services", json={"name": SERVICE, "workload": "echo",
                                           "cluster": "core"})
        assert r.status_code == 201, r.text
        r = api.post("/v1/services", json={"name": CLIENT, "workload": "probe",
                                           "cluster": "core", "peers": [SERVICE],
                                           "params": {"rate": 100}})
        assert r.status_code == 201, r.text
        yield SERVICE
        for name in (CLIENT, SERVICE):
            assert api.delete(f"/v1/services/{name}").status_code == 204


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: scripts/setup.sh installs chromium"
    with warnings.catch_warnings():  # its import may warn on newer Pythons; not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1280, "height": 800})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            context.close()


@pytest.mark.timeout(300)
def test_dashboard_moves_a_service(lab_stack: Stack, operator_token: str, demo_service: str,
                                   browser_page: Any, tmp_path: Path) -> None:
    page = browser_page
    shots = tmp_path / "shots"
    shots.mkdir()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 else None)

    page.goto(f"{lab_stack.api_url}/ui")
    page.wait_for_selector("#login-form")
    assert page.is_visible("#token") and not page.is_visible("#dash")
    page.screenshot(path=str(shots / "1-sign-in.png"))

    page.fill("#token", operator_token)
    page.press("#token", "Enter")
    for cluster in ("core", "edge"):
        page.wait_for_selector(f"#clusters [data-cluster={cluster}] h3")
    page.wait_for_selector(f"#clusters [data-cluster=core] li[data-service={SERVICE}]")
    page.wait_for_selector(f"#graph g.svc[data-service={SERVICE}][data-cluster=core]")
    # the client's link to the echo service (a flat line: attached, not "visible")
    page.wait_for_selector("#graph line.link", state="attached")
    assert page.locator("#clusters [data-cluster=core] .node").count() == 2
    row = page.locator(f"#services tr[data-service={SERVICE}]")
    assert "core" in row.inner_text()
    page.wait_for_function(  # path health from the node agent's check
        f"() => !document.querySelector('#services tr[data-service={SERVICE}] .health-none')")
    assert "ok" in row.locator("td").nth(1).inner_text()
    storage = page.evaluate("() => [sessionStorage.getItem('mobility.token'), "
                            "localStorage.length, document.cookie]")
    assert storage == [operator_token, 0, ""]
    page.screenshot(path=str(shots / "2-dashboard.png"), full_page=True)

    # keyboard only: Tab from the top of the page to the move button, then Enter
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    target = f"move-{SERVICE}"
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == target:
            break
    else:
        pytest.fail(f"Tab never reached #{target}")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), "the focused button shows no focus ring"
    assert page.evaluate(f"() => document.getElementById('target-{SERVICE}').value") == "edge"
    page.screenshot(path=str(shots / "3-focus-on-move.png"))
    page.keyboard.press("Enter")

    move = page.locator(f"#moves li.move:has-text('{SERVICE}: core')").first
    move.wait_for()
    page.wait_for_selector(f"#moves li.move[data-status=succeeded]:has-text('{SERVICE}: core')",
                           timeout=MOVE_TIMEOUT_MS)
    done = move.locator(".timeline li.done")
    assert done.count() == 6, move.inner_text()
    assert "freeze window:" in move.inner_text()
    assert "status: succeeded" in move.locator(".events").inner_text()  # from the live stream
    page.wait_for_selector(f"#graph g.svc[data-service={SERVICE}][data-cluster=edge]")
    page.wait_for_selector(f"#clusters [data-cluster=edge] li[data-service={SERVICE}]")
    assert "edge" in row.inner_text()
    page.screenshot(path=str(shots / "4-moved.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)  # let the layout settle after the resize
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px on a phone"
    button = page.locator(f"#move-{SERVICE}")
    button.scroll_into_view_if_needed()
    assert button.is_visible()
    page.screenshot(path=str(shots / "5-phone.png"), full_page=True)
    assert problems == [], problems
