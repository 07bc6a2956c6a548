"""The page-test infrastructure itself (tests/browser_support.py), against a tiny app of its own:
Chromium renders what uvicorn serves, and the recorder catches what page tests must not let by.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from litestar import Litestar, MediaType, Response, get
from playwright.async_api import Browser

from tests.browser_support import (
    LiveApp,
    NewPage,
    horizontal_overflow,
    open_page,
    serve_app,
)

STRICT_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'"


def html(body: str, *, csp: str | None = STRICT_CSP) -> Response[str]:
    page = f'<!doctype html><html><head><meta charset="utf-8"><title>t</title></head>{body}</html>'
    headers = {"Content-Security-Policy": csp} if csp else {}
    return Response(page, media_type=MediaType.HTML, headers=headers)


@get("/", sync_to_thread=False)
def home() -> Response[str]:
    return html('<body><p id="status">waiting</p><script src="/app.js"></script></body>')


@get("/app.js", sync_to_thread=False)
def app_js() -> Response[str]:
    script = 'document.getElementById("status").textContent = "script ran";'
    return Response(script, media_type="text/javascript")


@get("/inline", sync_to_thread=False)
def inline() -> Response[str]:
    return html(
        '<body><p id="status">waiting</p>'
        '<script>document.getElementById("status").textContent = "inline ran";</script></body>'
    )


@get("/throws", sync_to_thread=False)
def throws() -> Response[str]:
    return html('<body><p>x</p><script src="/throws.js"></script></body>')


@get("/throws.js", sync_to_thread=False)
def throws_js() -> Response[str]:
    return Response('throw new Error("boom from throws.js");', media_type="text/javascript")


@get("/foreign", sync_to_thread=False)
def foreign() -> Response[str]:
    # No CSP here: the browser itself must try the other host for the recorder to see it.
    return html('<body><img src="http://example.invalid/x.png" alt=""></body>', csp=None)


@get("/wide", sync_to_thread=False)
def wide() -> Response[str]:
    return html('<body><div id="w">wide</div><link rel="stylesheet" href="/wide.css"></body>')


@get("/wide.css", sync_to_thread=False)
def wide_css() -> Response[str]:
    return Response("#w { width: 2000px; }", media_type="text/css")


STARTED: list[str] = []


@asynccontextmanager
async def lifespan(_: Litestar) -> AsyncIterator[None]:
    STARTED.append("up")
    yield
    STARTED.append("down")


def tiny_app() -> Litestar:
    return Litestar(
        route_handlers=[home, app_js, inline, throws, throws_js, foreign, wide, wide_css],
        lifespan=[lifespan],
        logging_config=None,  # Litestar's default would configure the whole run's logging
    )


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    async with serve_app(tiny_app()) as url:
        yield url


async def test_serve_app_serves_on_this_loop_and_stops() -> None:
    STARTED.clear()
    async with serve_app(tiny_app()) as url:
        assert url.startswith("http://127.0.0.1:")
        assert STARTED == ["up"]  # the lifespan ran
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{url}/app.js")
        assert answer.status_code == 200
        assert "script ran" in answer.text
    assert STARTED == ["up", "down"]
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{url}/app.js")


async def test_serve_app_reports_a_failed_startup() -> None:
    @asynccontextmanager
    async def broken(_: Litestar) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="uvicorn exited with 3 while starting"):
        async with serve_app(
            Litestar(route_handlers=[home], lifespan=[broken], logging_config=None)
        ):
            pass
    assert time.monotonic() - started < 5


async def test_the_page_renders_and_its_script_runs(base_url: str, new_page: NewPage) -> None:
    view = await new_page(base_url, width=1024, height=700)
    await view.goto("/")
    assert await view.page.locator("#status").text_content() == "script ran"
    assert await view.page.evaluate("[window.innerWidth, window.innerHeight]") == [1024, 700]
    await view.assert_clean()
    assert f"{base_url}/app.js" in view.requests
    assert await horizontal_overflow(view) <= 0


async def test_an_inline_script_blocked_by_the_csp_is_an_error(
    base_url: str, new_page: NewPage
) -> None:
    view = await new_page(base_url)
    await view.goto("/inline")
    assert await view.page.locator("#status").text_content() == "waiting"  # it did not run
    await view.settle()
    assert any("Content Security Policy" in e.text for e in view.console_errors), view.console
    assert [v["directive"] for v in view.csp_violations] == ["script-src-elem"]
    with pytest.raises(AssertionError, match="Content Security Policy"):
        await view.assert_clean()


async def test_an_uncaught_exception_is_recorded(base_url: str, new_page: NewPage) -> None:
    view = await new_page(base_url)
    await view.goto("/throws")
    await view.settle()
    assert len(view.page_errors) == 1
    assert "boom from throws.js" in view.page_errors[0]
    with pytest.raises(AssertionError, match=r"uncaught: .*boom"):
        view.assert_no_errors()


async def test_a_request_to_another_host_is_recorded_and_blocked(
    base_url: str, new_page: NewPage
) -> None:
    view = await new_page(base_url)
    started = time.monotonic()
    await view.goto("/foreign")
    await view.settle()
    assert time.monotonic() - started < 5  # refused at once, never a DNS wait
    assert view.foreign_requests == ["http://example.invalid/x.png"]
    [failed] = view.failed_requests
    assert failed.url == "http://example.invalid/x.png"
    assert failed.failure.startswith("net::ERR_BLOCKED_BY_CLIENT"), failed
    with pytest.raises(AssertionError, match=r"example\.invalid"):
        view.assert_only_app_requests()


async def test_overflow_is_measured_against_the_viewport(base_url: str, new_page: NewPage) -> None:
    view = await new_page(base_url, width=800, height=600)
    await view.goto("/wide")
    assert await view.page.evaluate("window.innerWidth") == 800
    overflow = await horizontal_overflow(view.page)
    assert 1200 <= overflow <= 1220, overflow  # 2000 px + the body's margin, minus 800
    await view.assert_clean()
    roomy = await new_page(base_url, width=2400, height=600)
    await roomy.goto("/wide")
    assert await horizontal_overflow(roomy) <= 0


async def test_pages_are_isolated(base_url: str, new_page: NewPage) -> None:
    first = await new_page(base_url)
    await first.goto("/")
    await first.page.evaluate("localStorage.setItem('k', 'v')")
    second = await new_page(base_url)
    await second.goto("/")
    assert await second.page.evaluate("localStorage.getItem('k')") is None
    assert second.console == [] and second.requests[0] == f"{base_url}/"


async def test_open_page_without_the_fixture(browser: Browser) -> None:
    async with serve_app(tiny_app()) as url:
        async with open_page(browser, url, width=500, height=400) as view:
            await view.goto("/")
            assert await view.page.locator("#status").text_content() == "script ran"
            await view.assert_clean()
        assert view.page.is_closed()


async def test_live_app_serves_meterline(live_app: LiveApp, new_page: NewPage) -> None:
    view = await new_page(live_app.url)
    await view.goto("/healthz")
    assert '"ok"' in (await view.page.text_content("body") or "")
    await view.assert_clean()
