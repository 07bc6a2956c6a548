"""The usage portal as a browser sees it: first-render time and bytes transferred.

    python -m bench.portal [--runs 10]     (`make bench` runs it after the suite)

Starts `meterline serve --demo` (development, a fresh database), opens the demo company's
printed portal link in Debian's Chromium (CHROMIUM_PATH, else /usr/bin/chromium), and reads
the page's own User Timing marks: `meterline:rendered` (sections 1-6 shown: one GraphQL
request after the page and its two assets) and `meterline:events` (the audit trail shown: a
second request), in milliseconds from the navigation's start. Bytes are the Resource Timing
`transferSize` of the page, its assets and its GraphQL answers (headers included,
uncompressed: Meterline does not compress).

Cold: a new browser context each run (empty cache). Warm: reloads in one context (the assets
come from the cache under their content hash, the page is revalidated: a 304). The figures go
to stdout and under `sections.portal` of bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from bench.harness import (
    PROJECT_ROOT,
    free_port,
    fresh_database,
    machine_info,
    postgres_server,
    server_env,
    work_directory,
    write_section,
)

CHROMIUM = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}
MEASURE = """() => {
  const mark = (name) => performance.getEntriesByName(name)[0]?.startTime ?? null;
  const entries = [...performance.getEntriesByType("navigation"),
                   ...performance.getEntriesByType("resource")];
  return {
    rendered_ms: mark("meterline:rendered"),
    events_ms: mark("meterline:events"),
    transfer_bytes: entries.reduce((sum, e) => sum + e.transferSize, 0),
    body_bytes: entries.reduce((sum, e) => sum + e.decodedBodySize, 0),
    requests: entries.length,
  };
}"""


def start_demo(database_url: str, work: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    """`meterline serve --demo` in development; its process and the portal link it printed."""
    env = server_env(database_url, METERLINE_DATA_DIR=str(work / ".meterline" / "pgdata"))
    env["METERLINE_ENV"] = "development"
    process = subprocess.Popen(
        [sys.executable, "-m", "meterline", "serve", "--demo", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    printed = []
    for line in process.stdout:
        printed.append(line)
        if "serving on" in line:
            break
    link = re.search(r"http://\S+/portal#token=\S+", "".join(printed))
    if link is None:
        process.kill()
        raise SystemExit("bench.portal: serve --demo printed no portal link:\n" + "".join(printed))
    return process, link.group(0)


async def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30.0
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def loaded(page: Page) -> dict[str, Any]:
    await page.wait_for_function(
        "() => performance.getEntriesByName('meterline:events').length > 0"
    )
    figures: dict[str, Any] = await page.evaluate(MEASURE)
    return figures


async def cold_run(browser: Browser, link: str) -> dict[str, Any]:
    context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        page = await context.new_page()
        await page.goto(link)
        return await loaded(page)
    finally:
        await context.close()


async def measure(link: str, port: int, runs: int) -> dict[str, Any]:
    await wait_listening(port)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        try:
            await cold_run(browser, link)  # the server's and the browser's first use: not counted
            cold = [await cold_run(browser, link) for _ in range(runs)]
            context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            page = await context.new_page()
            await page.goto(link)
            await loaded(page)
            warm = []
            for _ in range(runs):
                await page.reload()
                warm.append(await loaded(page))
            await context.close()
        finally:
            await browser.close()
    return {"cold": summarise(cold), "warm": summarise(warm)}


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float:
        return float(statistics.median(s[key] for s in samples))

    return {
        "runs": len(samples),
        "rendered_ms_median": round(median("rendered_ms"), 1),
        "rendered_ms_max": round(max(s["rendered_ms"] for s in samples), 1),
        "events_ms_median": round(median("events_ms"), 1),
        "transfer_bytes_median": int(median("transfer_bytes")),
        "body_bytes_median": int(median("body_bytes")),
        "requests": samples[0]["requests"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.portal", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="measured loads of each kind")
    args = parser.parse_args(argv)
    with (
        work_directory("meterline-bench-portal-") as work,
        postgres_server(work) as postgres,
        fresh_database(postgres) as database_url,
    ):
        port = free_port()
        process, link = start_demo(database_url, work, port)
        try:
            figures = asyncio.run(measure(link, port, args.runs))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print("usage portal (the demo company, Chromium headless, 1280 px):")
    print(f"  {'':6} {'first render':>14} {'events shown':>14} {'transferred':>12} {'requests':>9}")
    for kind in ("cold", "warm"):
        f = figures[kind]
        print(
            f"  {kind:6} {f['rendered_ms_median']:>11.1f} ms {f['events_ms_median']:>11.1f} ms "
            f"{f['transfer_bytes_median'] / 1024:>9.1f} KB {f['requests']:>9}"
        )
    print("  (medians; first render = sections 1-6 shown, from the navigation's start)")
    write_section("portal", {"figures": figures, "machine": machine_info(), "runs": args.runs})


if __name__ == "__main__":
    main()
