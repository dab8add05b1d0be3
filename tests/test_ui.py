"""The web dashboard (``/ui``) in a real headless browser.

Playwright for Python drives the Debian ``chromium`` package (``.ci/run`` installs it when missing;
no browser is downloaded) against a real server in this process: the real SmolLM2 deployed through
the form on the local shimlet with llama.cpp, the stepper followed live to ``running`` without a
reload, both logs opened, a scale to 2 and a delete; a deploy that fails model-validation shows the
failed step in red with its reason; a server with tokens asks for one, keeps it in the tab's
sessionStorage only, and a viewer gets no buttons.  Screenshots go to ``tests/artifacts/ui/``
(git-ignored); docs/img/dashboard.png is one of them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.server.routes.ui import ASSETS
from tests.conftest import REPO, Live, serve
from tests.helpers.api_flows import DEPLOY
from tests.helpers.auth import ADMIN, OPER, VIEW, bearer, token_settings
from tests.helpers.local_shim import SMOLLM2, local_settings

pw_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts" / "ui"
UI_DIR = REPO / "src" / "modserv_shim" / "server" / "ui"
RED = "rgb(180, 35, 24)"  # --red in style.css
HAVE_CHROMIUM = CHROMIUM.exists()
HAVE_SMOLLM2 = SMOLLM2.exists()
UNSAFE = re.compile(r"\blocalStorage\.|document\.cookie|\.(inner|outer)HTML\b|insertAdjacentHTML|\beval\(")


def _need(what: bool, why: str) -> None:
    if not what:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    _need(HAVE_CHROMIUM, f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    async with pw_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def new_page(browser: Any, live: Live, errors: list[str]) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)  # a 401, a 404
    return page


async def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def streams(live: Live, sid: str) -> bool:
    """Whether the server streams the service's events (else the page polls the JSON routes)."""
    async with live.client.stream("GET", f"/api/v1/modserv/{sid}/events",
                                  headers={"Accept": "text/event-stream"}) as r:
        return str(r.headers.get("content-type", "")).startswith("text/event-stream")


@pytest.fixture
async def local_live(tmp_path: Path) -> AsyncIterator[Live]:
    live = await serve(local_settings(tmp_path))
    try:
        yield live
    finally:
        await live.stop(delete_services=True)


# ------------------------------------------------------------------ the static files


async def test_the_page_and_its_files_are_served_with_a_strict_policy(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    assert sorted(ASSETS) == sorted(p.name for p in UI_DIR.iterdir() if p.is_file()), \
        "every file in server/ui is on the allowlist of routes/ui.py, and only those"
    r = await live.client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-cache"
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), "no inline script"
    assert not re.search(r"\son[a-z]+=", r.text), "no inline event handler"
    assert "http://" not in r.text and "https://" not in r.text, "nothing from another site"
    for name, ctype in ASSETS.items():
        a = await live.client.get(f"/ui/{name}")
        assert a.status_code == 200 and a.headers["content-type"] == ctype, name
        assert a.headers["content-security-policy"] == csp
        again = await live.client.get(f"/ui/{name}", headers={"If-None-Match": a.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    for bad in ("nope.js", "..%2Fapp.py", "%2E%2E", "index.html%00"):
        r = await live.client.get(f"/ui/{bad}")
        assert r.status_code == 404 and r.json()["code"] == 1002, bad
    for name in ASSETS:  # nothing from a CDN, no storage but the session's
        text = (UI_DIR / name).read_text()
        assert not UNSAFE.search(text), name
        assert not re.search(r"(src|href|from|import)\s*[=(]?\s*['\"]https?://", text), name


async def test_whoami(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(token_settings(tmp_path))
    for token, want in ((VIEW, ("vera", "viewer")), (OPER, ("otto", "operator")), (ADMIN, ("ada", "admin"))):
        data = (await live.call("GET", "/api/v1/whoami", expect=200, headers=bearer(token)))["data"]
        assert (data["name"], data["role"], data["groups"]) == (*want, [])
    await live.call("GET", "/api/v1/whoami", expect=401)
    assert (await live.client.get("/ui")).status_code == 200  # the page itself needs no token


# ------------------------------------------------------------------ the real deploy


async def test_deploy_smollm2_through_the_form_and_follow_it_live(local_live: Live, browser: Any) -> None:
    _need(HAVE_SMOLLM2, f"{SMOLLM2} is missing: `make setup` extracts it")
    live = local_live
    errors: list[str] = []
    page = await new_page(browser, live, errors)
    await page.goto(f"{live.url}/ui")
    await page.wait_for_selector("body[data-ready]")
    await page.evaluate("() => { window.__sameDocument = 'yes'; }")  # gone if anything reloads the page

    await page.get_by_role("link", name="Deploy", exact=True).click()
    await page.get_by_label("Model name").fill("smollm2-ui")
    await page.get_by_label("Model file or folder").fill(str(SMOLLM2))
    await page.get_by_label("Memory").fill("2Gi")
    await page.get_by_label("CPU", exact=True).fill("1")
    await page.get_by_role("button", name="Preview (dry run)").click()
    command = page.locator("#dry-run-command")
    await command.wait_for()
    assert re.search(r"llama_cpp\.server .*--model_alias smollm2-ui", await command.inner_text())
    assert "it fits" in await page.locator("#dry-run-fit").inner_text()
    await shot(page, "01-dry-run")
    assert (await live.call("GET", "/api/v1/modserv"))["data"] == [], "a dry run stores nothing"

    await page.get_by_role("button", name="Deploy", exact=True).click()
    await page.wait_for_url(re.compile(r"#/service/smollm2-ui-"))
    sid = page.url.split("#/service/", 1)[1]
    stepper = page.locator("#stepper")
    await stepper.wait_for()
    await shot(page, "02-deploying")
    await page.locator('#stepper li[data-state="running"][data-status="current"]').wait_for(timeout=120_000)
    for st in ("initializing", "pipeline_running", "deploying", "health_checking"):
        assert await stepper.locator(f'li[data-state="{st}"]').get_attribute("data-status") == "done", st
    for step in ("model-validation", "config-rendering", "resource-deployment", "health-check"):
        assert await stepper.locator(f'.substep[data-step="{step}"]').get_attribute("data-status") == "succeeded"
    assert await page.evaluate("() => window.__sameDocument") == "yes", "the page was reloaded"
    endpoint = await page.locator("#endpoint").inner_text()
    assert endpoint.startswith("http://127.0.0.1:") and endpoint.endswith("/v1")
    if await streams(live, sid):
        assert "event stream" in await page.locator("#live-mode").inner_text()
    rows = page.locator("#attempts tbody tr")
    assert await rows.count() == 4
    assert "anonymous" in await rows.first.inner_text()  # the operator of each attempt

    await page.get_by_text("Pipeline log", exact=True).click()
    pipeline_log = page.locator("#pipeline-log-lines")
    await pipeline_log.filter(has_text="a one-token completion answered").wait_for()
    assert "it fits" in await pipeline_log.inner_text()
    path = await shot(page, "03-running")
    if os.environ.get("MODSERV_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copy(path, REPO / "docs" / "img" / "dashboard.png")
    await page.get_by_text("Runtime log", exact=False).first.click()
    runtime_log = page.locator("#runtime-log-lines")
    await runtime_log.filter(has_text=re.compile(r"\[replica 0\]")).wait_for()
    await shot(page, "04-runtime-log")

    await page.get_by_label("Replicas").fill("2")
    await page.get_by_role("button", name="Scale").click()
    await page.locator("#replicas").filter(has_text="2 of 2 ready").wait_for(timeout=120_000)
    assert "scaling to 2 replicas" in await page.locator("#action-result").inner_text()
    await shot(page, "05-scaled")

    page.once("dialog", lambda d: d.accept())
    await page.get_by_role("button", name="Delete").click()
    await page.locator('#stepper li.end[data-state="terminated"]').wait_for(timeout=60_000)
    assert await page.get_by_role("button", name="Delete").is_disabled()
    assert await page.evaluate("() => window.__sameDocument") == "yes", "the page was reloaded"
    await shot(page, "06-deleted")

    await page.get_by_role("link", name="Services", exact=True).click()
    await page.get_by_label("Hide deleted services").uncheck()
    row = page.locator(f'#services tr[data-service="{sid}"]')
    assert await row.get_attribute("data-state") == "terminated"
    assert "Deleted" in await row.inner_text() and "local" in await row.inner_text()
    if await streams(live, sid):
        await page.locator("#list-live").filter(has_text="event stream").wait_for()
    assert not errors, errors


async def test_a_failed_deploy_shows_the_failed_step_in_red_with_its_reason(local_live: Live, browser: Any) -> None:
    _need(HAVE_SMOLLM2, f"{SMOLLM2} is missing: `make setup` extracts it")
    live = local_live
    errors: list[str] = []
    page = await new_page(browser, live, errors)
    await page.goto(f"{live.url}/ui#/deploy")
    await page.get_by_label("Model name").fill("too-small")
    await page.get_by_label("Model file or folder").fill(str(SMOLLM2))
    await page.get_by_label("Memory").fill("100Mi")
    await page.get_by_role("button", name="Deploy", exact=True).click()
    await page.wait_for_url(re.compile(r"#/service/too-small-"))

    failed_stage = page.locator('#stepper li[data-state="pipeline_running"][data-status="failed"]')
    await failed_stage.wait_for()
    step = page.locator('#stepper .substep[data-step="model-validation"]')
    assert await step.get_attribute("data-status") == "failed"
    assert "raise resourceRequirements.memory" in await step.inner_text()
    # Retried assertions: the page redraws the stepper on every event, so an element found a moment ago
    # may be gone (a one-shot getComputedStyle on it reads "").
    await pw_api.expect(step).to_have_css("color", RED)
    await pw_api.expect(failed_stage.locator(".dot")).to_have_css("background-color", RED)
    reason = await page.locator("#failure-reason").inner_text()
    assert "the model needs" in reason and "100Mi" in reason
    await pw_api.expect(page.locator("#failure")).to_have_css("border-color", RED)
    for later in ("deploying", "health_checking", "running"):
        assert await page.locator(f'#stepper li[data-state="{later}"]').get_attribute("data-status") == "pending"
    assert await page.get_by_role("button", name="Retry from the failed step").is_enabled()
    assert await page.get_by_role("button", name="Scale").is_disabled()
    await shot(page, "07-failed")

    # a request the API refuses outright: the field's problem next to it, nothing deployed
    await page.goto(f"{live.url}/ui#/deploy")
    await page.get_by_label("Model name").fill("Bad Name")
    await page.get_by_label("Model file or folder").fill(str(SMOLLM2))
    await page.get_by_role("button", name="Deploy", exact=True).click()
    await page.locator("#deploy-error").wait_for()
    assert "modelName" in await page.locator("#deploy-error").inner_text()
    assert "lowercase" in await page.locator("#modelName-error").inner_text()
    assert not errors, errors


# ------------------------------------------------------------------ tokens and roles


async def test_it_asks_for_a_token_keeps_it_in_the_tab_and_hides_buttons_for_a_viewer(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path, browser: Any) -> None:
    live: Live = await start_server(token_settings(tmp_path))
    r = await live.client.post("/api/v1/modserv/deploy", headers=bearer(OPER), json={**DEPLOY, "modelName": "guarded"})
    assert r.status_code == 202, r.text
    sid = r.json()["data"]["serviceId"]
    errors: list[str] = []
    page = await new_page(browser, live, errors)
    await page.goto(f"{live.url}/ui")
    dialog = page.get_by_role("dialog")
    await dialog.wait_for()
    assert "needs an API token" in await dialog.inner_text()
    await page.get_by_label("API token", exact=True).fill("not-a-known-token-0123456789")
    await page.get_by_role("button", name="Use this token").click()
    await dialog.filter(has_text="unknown API token").wait_for()
    await page.get_by_label("API token", exact=True).fill(VIEW)
    await page.get_by_role("button", name="Use this token").click()
    await page.locator(f'#services tr[data-service="{sid}"]').wait_for()
    assert await page.locator("#who").inner_text() == "vera (viewer)"
    assert not await page.get_by_role("link", name="Deploy", exact=True).is_visible()
    assert await page.evaluate("() => sessionStorage.getItem('modserv.token')") == VIEW
    assert await page.evaluate("() => localStorage.length") == 0
    assert await page.context.cookies() == []

    await page.get_by_role("link", name="guarded").click()
    await page.locator("#stepper").wait_for()
    assert "need the operator role" in await page.locator("#read-only").inner_text()
    for name in ("Scale", "Delete", "Retry from the failed step"):
        assert await page.get_by_role("button", name=name).count() == 0, name
    await shot(page, "08-viewer")
    await page.goto(f"{live.url}/ui#/deploy")
    await page.locator("#read-only").wait_for()
    assert await page.locator("#deploy-form").count() == 0

    # another tab of the same browser does not get the token: it asks again; an operator gets the buttons
    other = await page.context.new_page()
    await other.goto(f"{live.url}/ui#/service/{sid}")
    await other.get_by_role("dialog").wait_for()
    await other.get_by_label("API token", exact=True).fill(OPER)
    await other.get_by_role("button", name="Use this token").click()
    await other.get_by_role("button", name="Delete").wait_for()
    assert await other.locator("#who").inner_text() == "otto (operator)"
    await other.get_by_role("button", name="Forget the token").click()
    await other.get_by_role("dialog").wait_for()
    assert await other.evaluate("() => sessionStorage.length") == 0
    assert not errors, errors


async def test_the_token_is_sent_as_a_bearer_header_only(start_server, tmp_path: Path, browser: Any) -> None:  # type: ignore[no-untyped-def]
    """The API calls carry ``Authorization: Bearer``; the token never shows in a URL."""
    live: Live = await start_server(token_settings(tmp_path))
    page = await new_page(browser, live, [])
    seen: list[tuple[str, str | None]] = []
    page.on("request", lambda req: seen.append((req.url, req.headers.get("authorization"))))
    await page.goto(f"{live.url}/ui#/plugins")
    await page.get_by_label("API token", exact=True).fill(ADMIN)
    await page.get_by_role("button", name="Use this token").click()
    await page.locator('#pipelines tr[data-plugin="fake"]').wait_for()
    api = [(u, a) for u, a in seen if "/api/v1/" in u]
    assert api and all(ADMIN not in u for u, _ in seen)
    assert (f"{live.url}/api/v1/plugins", f"Bearer {ADMIN}") in api
    assert all(a is None for u, a in seen if "/ui" in u), "the static files are fetched without the token"
    async with httpx.AsyncClient() as c:  # and the page itself is the same for everyone
        assert (await c.get(f"{live.url}/ui")).status_code == 200


async def test_a_server_without_the_event_stream_is_followed_by_polling(start_server, browser: Any) -> None:  # type: ignore[no-untyped-def]
    """An older server answers the events routes with JSON only: the page asks the JSON routes every second.

    The real server is asked with ``Accept: application/json`` (what such a server answers); a delete from
    another client shows without a reload."""
    live: Live = await start_server()
    errors: list[str] = []
    page = await new_page(browser, live, errors)

    async def as_json(route: Any) -> None:
        await route.fallback(headers={**route.request.headers, "accept": "application/json"})

    await page.route(re.compile(r"/api/v1/(modserv/[^/]+/)?events$"), as_json)
    await page.goto(f"{live.url}/ui#/deploy")
    await page.get_by_label("Model name").fill("polled")
    await page.get_by_label("Model file or folder").fill("/models/llama-3-8b")
    await page.get_by_role("button", name="Deploy", exact=True).click()
    await page.wait_for_url(re.compile(r"#/service/polled-"))
    sid = page.url.split("#/service/", 1)[1]
    await page.locator('#stepper li[data-state="running"][data-status="current"]').wait_for()
    assert "every second" in await page.locator("#live-mode").inner_text()
    await page.evaluate("() => { window.__sameDocument = 'yes'; }")
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)  # another client
    await page.locator('#stepper li.end[data-state="terminated"]').wait_for()
    assert await page.evaluate("() => window.__sameDocument") == "yes"

    await page.get_by_role("link", name="Services", exact=True).click()
    await page.locator("#services").wait_for()
    await page.locator("#list-live").filter(has_text="read every 2 seconds").wait_for()
    assert not errors, errors
