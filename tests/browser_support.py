"""Page tests: a real Chromium (Debian's, driven by Playwright) against an app served over real
HTTP by uvicorn on the test's own event loop.

conftest registers the fixtures (browser, new_page, live_app) once for the whole run; a test
module imports the helpers:

    from tests.browser_support import horizontal_overflow, serve_app

    async def test_portal_fits_a_phone(live_app, new_page):
        view = await new_page(live_app.url, width=375, height=740)
        await view.goto("/portal")
        await view.assert_clean()  # no console error, page error, CSP violation, other host
        assert await horizontal_overflow(view.page) <= 0

Everything runs on the session's event loop (pyproject: asyncio_default_fixture_loop_scope and
asyncio_default_test_loop_scope = "session"): the server shares the database pool the test
fixtures opened, and Playwright's connection lives on the loop it was started on. No threads.

The browser is CHROMIUM_PATH, else /usr/bin/chromium (`make browser` installs Debian's
package; `playwright install` needs the internet and is never used). When it cannot start, the
tests that need it fail, saying so: they are never skipped.

Test modules import this module before pytest loads it as a plugin, too late for pytest to
rewrite its asserts (it would warn): PYTEST_DONT_REWRITE. Its assertions carry their messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlsplit

import pytest
import uvicorn
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    Route,
    WebError,
    async_playwright,
)

if TYPE_CHECKING:
    from tests.conftest import Api, Clock

CHROMIUM = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox"]  # CI runs as root, where Chromium's sandbox refuses to start
SERVER_START_TIMEOUT = 10.0  # seconds
SERVER_STOP_TIMEOUT = 10.0
PAGE_TIMEOUT_MS = 10_000  # for actions and navigations (Playwright's own default: 30 s)
DEFAULT_VIEWPORT = (1280, 800)
_LOCAL_SCHEMES = frozenset({"data", "blob", "about", "chrome-error"})


# --- the app over real HTTP ------------------------------------------------------------------


class _InProcessServer(uvicorn.Server):
    # uvicorn takes over SIGINT/SIGTERM while it serves; here they belong to pytest (Ctrl-C
    # stops the run at once instead of shutting the test's server down gracefully).
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_app(app: Any, *, start_timeout: float = SERVER_START_TIMEOUT) -> AsyncIterator[str]:
    """Serve an ASGI app (lifespan included) on 127.0.0.1, a free port, as a task on the running
    loop; yield its base URL (`http://127.0.0.1:<port>`), stop it on exit."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(SERVER_STOP_TIMEOUT),
    )
    server = _InProcessServer(config)

    async def run() -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn's answer to a failed startup: not for the test run
            raise RuntimeError(
                f"uvicorn exited with {exc.code} while starting: the app's lifespan startup "
                "failed or the port could not be bound (see the log)"
            ) from None

    task = asyncio.get_running_loop().create_task(run(), name="serve_app")
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("uvicorn stopped before it started (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn did not start within {start_timeout} s")
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        done, _ = await asyncio.wait({task}, timeout=SERVER_STOP_TIMEOUT)
        if not done:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif server.started and not task.cancelled() and task.exception() is not None:
            raise RuntimeError("the app's server failed while serving") from task.exception()


# --- the browser -----------------------------------------------------------------------------

_BROWSER_LOOPS: weakref.WeakKeyDictionary[Browser, asyncio.AbstractEventLoop] = (
    weakref.WeakKeyDictionary()
)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Chromium for the whole run (under a second to start), headless."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"No Chromium at {CHROMIUM}: the browser tests need it. `make browser` installs "
            "Debian's package (apt-get install --no-install-recommends chromium); set "
            "CHROMIUM_PATH for another one.",
            pytrace=False,
        )
    playwright = await async_playwright().start()
    try:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
    except Exception as exc:
        await playwright.stop()
        pytest.fail(f"Chromium ({CHROMIUM}) did not start: {exc}", pytrace=False)
    _BROWSER_LOOPS[launched] = asyncio.get_running_loop()
    try:
        yield launched
    finally:
        await launched.close()
        await playwright.stop()


# --- a page that records what went wrong -----------------------------------------------------


@dataclass(frozen=True)
class ConsoleEntry:
    type: str  # "error" or "warning"
    text: str
    url: str  # where it was logged from ("" when unknown)

    def __str__(self) -> str:
        return f"[{self.type}] {self.text}" + (f" ({self.url})" if self.url else "")


@dataclass(frozen=True)
class FailedRequest:
    url: str
    failure: str  # Chromium's net error, e.g. net::ERR_BLOCKED_BY_CLIENT

    def __str__(self) -> str:
        return f"{self.url}: {self.failure}"


@dataclass
class BrowserPage:
    """A fresh browser context and its page, with what happened in them.

    Recorded for every page of the context: console errors and warnings (Chromium reports a CSP
    violation and a failed resource load as console errors), uncaught exceptions, CSP
    violations (`securitypolicyviolation` events), requests that failed at the network level,
    and the URL of every request. With `block_foreign` (the default) a request to any origin but
    `base_url` is aborted before it leaves the machine, and still recorded.
    """

    page: Page
    context: BrowserContext
    base_url: str
    console: list[ConsoleEntry] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[dict[str, Any]] = field(default_factory=list)
    failed_requests: list[FailedRequest] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return urljoin(self.base_url + "/", path)

    async def goto(self, path: str = "/", **options: Any) -> Response:
        """Open a path of the app (or any URL) and check it answered 2xx or 3xx."""
        response = await self.page.goto(self.url(path), **options)
        assert response is not None, f"no response for {path}"
        assert response.ok, f"{path} answered {response.status}: {await response.text()}"
        return response

    @property
    def console_errors(self) -> list[ConsoleEntry]:
        return [entry for entry in self.console if entry.type == "error"]

    @property
    def console_warnings(self) -> list[ConsoleEntry]:
        return [entry for entry in self.console if entry.type == "warning"]

    @property
    def foreign_requests(self) -> list[str]:
        """Requests to anywhere but the app (data:, blob: and about: URLs are not requests)."""
        return [url for url in self.requests if _is_foreign(url, self.base_url)]

    async def settle(self) -> None:
        """Let events the browser already sent reach the recorder (one round trip)."""
        if not self.page.is_closed():
            await self.page.evaluate("0")

    def assert_no_errors(self, *, warnings: bool = False) -> None:
        """No console error (nor warning, if asked), uncaught exception, CSP violation or failed
        request so far."""
        problems = [str(e) for e in (self.console if warnings else self.console_errors)]
        problems += [f"uncaught: {e}" for e in self.page_errors]
        problems += [f"CSP violation: {v}" for v in self.csp_violations]
        problems += [f"request failed: {f}" for f in self.failed_requests]
        assert not problems, "the page reported problems:\n" + "\n".join(problems)

    def assert_only_app_requests(self) -> None:
        foreign = self.foreign_requests
        assert not foreign, f"requests to other hosts than {self.base_url}:\n" + "\n".join(foreign)

    async def assert_clean(self, *, warnings: bool = False) -> None:
        """Both checks, after letting pending events arrive."""
        await self.settle()
        self.assert_only_app_requests()
        self.assert_no_errors(warnings=warnings)


def _is_foreign(url: str, base_url: str) -> bool:
    parts, own = urlsplit(url), urlsplit(base_url)
    if parts.scheme in _LOCAL_SCHEMES:
        return False
    return (parts.scheme, parts.netloc) != (own.scheme, own.netloc)


_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__recordCspViolation({
    directive: e.effectiveDirective, blocked: e.blockedURI, policy: e.originalPolicy,
    disposition: e.disposition, source: e.sourceFile, line: e.lineNumber,
  });
});
"""


@contextlib.asynccontextmanager
async def open_page(
    browser: Browser,
    base_url: str,
    *,
    width: int = DEFAULT_VIEWPORT[0],
    height: int = DEFAULT_VIEWPORT[1],
    block_foreign: bool = True,
    **context_options: Any,
) -> AsyncIterator[BrowserPage]:
    """A new context (no cookies or storage shared with other tests) with one page of the
    given viewport, recording as `BrowserPage` says; closed on exit."""
    loop = _BROWSER_LOOPS.get(browser)
    if loop is not None and loop is not asyncio.get_running_loop():
        raise RuntimeError(
            "the browser was started on another event loop than this test's: run fixtures and "
            'tests on one loop (asyncio_default_*_loop_scope = "session" in pyproject.toml)'
        )
    base_url = base_url.rstrip("/")
    context = await browser.new_context(
        viewport={"width": width, "height": height}, base_url=base_url, **context_options
    )
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        view = BrowserPage(page=await context.new_page(), context=context, base_url=base_url)

        def on_console(message: ConsoleMessage) -> None:
            if message.type not in ("error", "warning"):
                return
            entry = ConsoleEntry(message.type, message.text, message.location.get("url", ""))
            # Chromium asks for /favicon.ico by itself, some time after the load, unless
            # requests are intercepted (block_foreign): a 404 there is not the page's error.
            if urlsplit(entry.url).path != "/favicon.ico":
                view.console.append(entry)

        def on_web_error(error: WebError) -> None:
            view.page_errors.append(error.error.stack or error.error.message)

        def on_failed(request: Request) -> None:
            view.failed_requests.append(FailedRequest(request.url, request.failure or "failed"))

        async def refuse(route: Route) -> None:
            await route.abort("blockedbyclient")

        context.on("console", on_console)
        context.on("weberror", on_web_error)
        context.on("request", lambda request: view.requests.append(request.url))
        context.on("requestfailed", on_failed)
        view.page.on("crash", lambda _page: view.page_errors.append("the page crashed"))
        await context.expose_binding(
            "__recordCspViolation", lambda _source, violation: view.csp_violations.append(violation)
        )
        await context.add_init_script(_CSP_LISTENER)
        if block_foreign:
            await context.route(lambda url: _is_foreign(url, base_url), refuse)
        yield view
    finally:
        await context.close()


class NewPage(Protocol):
    def __call__(
        self,
        base_url: str,
        *,
        width: int = ...,
        height: int = ...,
        block_foreign: bool = ...,
        **context_options: Any,
    ) -> Awaitable[BrowserPage]: ...


@pytest.fixture
async def new_page(browser: Browser) -> AsyncIterator[NewPage]:
    """`await new_page(base_url, width=375, height=740)`: a fresh context and page (see
    `open_page`), closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(base_url: str, **options: Any) -> BrowserPage:
            return await stack.enter_async_context(open_page(browser, base_url, **options))

        yield make


async def horizontal_overflow(page: Page | BrowserPage) -> int:
    """How many CSS pixels the document is wider than the viewport (<= 0: no sideways scroll)."""
    target = page.page if isinstance(page, BrowserPage) else page
    overflow: int = await target.evaluate(
        "document.documentElement.scrollWidth - window.innerWidth"
    )
    return overflow


# --- the real Meterline app, served -----------------------------------------------------------


@dataclass
class LiveApp:
    """Meterline's app served over HTTP at `url`; `api` talks GraphQL to the same app (over
    ASGI) to set data up, with the same clock and settings."""

    url: str
    api: Api

    @property
    def clock(self) -> Clock:
        return self.api.clock


@pytest.fixture
async def live_app(database_url: str, clock: Clock) -> AsyncIterator[LiveApp]:
    """The real app, built as conftest's `api` fixture builds it (development settings, the
    run's database pool), served over real HTTP."""
    from meterline.app import create_app
    from tests.conftest import Api, base_settings, client_for

    settings = base_settings(database_url=database_url)
    app = create_app(settings, clock=clock, manage_database=False)
    async with serve_app(app) as url, client_for(app) as client:
        yield LiveApp(url=url, api=Api(client=client, clock=clock, settings=settings))
