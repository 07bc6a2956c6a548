"""Where a request's server CPU goes: the same request measured in-process, whole and with
parts of it taken away, in CPU milliseconds per request (time.process_time).

    python -m bench.breakdown [--requests 3000] [--batches 30]

Every variant runs N requests one after the other through the real ASGI app (the app
`meterline serve` builds), in this process, on a freshly migrated database, after a warm-up:

- http floor: GET /healthz through the app (Litestar's routing and the app's middleware: the
  request id and Prometheus), no GraphQL;
- graphql, no database: the recordUsage mutation with the service replaced by a canned answer:
  Litestar, Strawberry's HTTP view, the token (remembered), GraphQL execution (parse and
  validation cached) and the JSON answer;
- graphql execution only: `schema.execute` of the same document and context, no HTTP;
- service and database: `services.usage.record_usage` called directly (validation, the
  company's row and the recording statement through asyncpg);
- full request: the real thing.

Beside them, what parsing and validating the document would cost on every request without
the app's ParserCache and ValidationCache (graphql-core's parse and validate, timed alone),
and the same split for a recordUsageBatch of 1,000 events. uvicorn's own share (HTTP parsing,
socket I/O on the event loop) is not here: it is the suite's server CPU per request minus the
full request's figure. Figures go to stdout and to `sections.breakdown` of latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from graphql import parse, validate

from bench import harness
from meterline.app import create_app
from meterline.auth import TokenVerifier, mint_service_token
from meterline.billing.catalog import EventType
from meterline.config import Settings
from meterline.db import engine
from meterline.schema import build_schema
from meterline.schema.context import Context
from meterline.services import usage

RECORD = (
    "mutation($input: RecordUsageInput!) { recordUsage(input: $input) "
    "{ __typename ... on UsageRecorded { usage { used } } } }"
)
BATCH = (
    "mutation($events: [RecordUsageInput!]!) { recordUsageBatch(events: $events) "
    "{ __typename ... on UsageBatchRecorded { recorded duplicates } } }"
)
SECRET = harness.new_secret()
COMPANIES = 50


def body_of(document: str, variables: dict[str, Any]) -> bytes:
    return json.dumps({"query": document, "variables": variables}).encode()


def record_variables() -> dict[str, Any]:
    return {"input": {"eventType": "GUEST_INVITATION", "quantity": 3, "idempotencyKey": key()}}


def batch_variables(size: int) -> dict[str, Any]:
    return {
        "events": [
            {"eventType": "GUEST_INVITATION", "quantity": 1, "idempotencyKey": key()}
            for _ in range(size)
        ]
    }


def key() -> str:
    return uuid.uuid4().hex


class InProcess:
    """Requests straight into the ASGI app: no socket, no uvicorn."""

    def __init__(self, app: Any, tokens: list[str]) -> None:
        self.app = app
        self.tokens = tokens
        self.sent = 0

    async def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        token = self.tokens[self.sent % len(self.tokens)]
        self.sent += 1
        headers = [
            (b"host", b"bench"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        delivered = False
        answer: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                answer.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return b"".join(answer)


async def cpu_ms_per_call(
    call: Callable[[], Awaitable[bytes | object]], count: int, expect: bytes | None = None
) -> float:
    """CPU of this process per call, after a warm-up; every answer checked when `expect`."""
    for _ in range(max(20, count // 10)):
        await call()
    started = time.process_time()
    for _ in range(count):
        answer = await call()
        if expect is not None:
            assert isinstance(answer, bytes), answer
            assert expect in answer and b'"errors"' not in answer, answer[:300]
    return round((time.process_time() - started) / count * 1000, 3)


@contextmanager
def replaced(module: Any, name: str, stand_in: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, stand_in)
    try:
        yield
    finally:
        setattr(module, name, original)


def parse_and_validate_ms(schema: Any, document: str, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        assert not validate(schema._schema, parse(document))
    return round((time.process_time() - started) / count * 1000, 3)


async def measure(database_url: str, requests: int, batches: int) -> dict[str, Any]:
    settings = Settings(service_jwt_secret=SECRET, database_url=database_url)
    connection = await asyncpg.connect(database_url)
    try:
        companies = await harness.insert_companies(connection, COMPANIES, "enterprise")
    finally:
        await connection.close()
    tokens = [mint_service_token(settings, company_id=c, service="bench") for c in companies]
    app = create_app(settings, manage_database=False)
    client = InProcess(app, tokens)
    await engine.open_pool(database_url, min_size=1, max_size=4)
    try:
        record = lambda: client.request("POST", "/graphql", body_of(RECORD, record_variables()))  # noqa: E731
        batch = lambda: client.request("POST", "/graphql", body_of(BATCH, batch_variables(1000)))  # noqa: E731
        now = datetime.now(UTC)
        one = usage.RecordRequest(EventType.GUEST_INVITATION, 3)
        thousand = [usage.RecordRequest(EventType.GUEST_INVITATION, 1) for _ in range(1000)]

        async def service_once() -> object:
            return await usage.record_usage(
                companies[0], one, now=datetime.now(UTC), late_grace_hours=1
            )

        async def batch_service_once() -> object:
            return await usage.record_usage_batch(
                companies[1], thousand, now=datetime.now(UTC), late_grace_hours=1
            )

        canned = await usage.record_usage(companies[2], one, now=now, late_grace_hours=1)
        canned_batch = await usage.record_usage_batch(
            companies[3], thousand, now=now, late_grace_hours=1
        )

        async def canned_answer(*_: Any, **__: Any) -> object:
            return canned

        async def canned_batch_answer(*_: Any, **__: Any) -> object:
            return canned_batch

        schema = build_schema(introspection=False)
        context = Context(
            principal=await TokenVerifier(settings).verify(tokens[0]),
            settings=settings,
            clock=lambda: datetime.now(UTC),
            request_id="bench",
        )

        async def execute_only() -> object:
            result = await schema.execute(
                RECORD, variable_values=record_variables(), context_value=context
            )
            assert not result.errors, result.errors
            return result

        figures: dict[str, Any] = {
            "requests": requests,
            "batches": batches,
            "record_usage": {
                "http_floor": await cpu_ms_per_call(
                    lambda: client.request("GET", "/healthz"), requests, b"ok"
                ),
            },
        }
        figures["record_usage"]["full_request"] = await cpu_ms_per_call(
            record, requests, b"UsageRecorded"
        )
        with replaced(usage, "record_usage", canned_answer):
            figures["record_usage"]["graphql_no_database"] = await cpu_ms_per_call(
                record, requests, b"UsageRecorded"
            )
            figures["record_usage"]["graphql_execution_only"] = await cpu_ms_per_call(
                execute_only, requests
            )
        figures["record_usage"]["service_and_database"] = await cpu_ms_per_call(
            service_once, requests
        )
        figures["record_usage"]["parse_and_validate_uncached"] = parse_and_validate_ms(
            schema, RECORD, requests
        )
        figures["batch_1000"] = {
            "full_request": await cpu_ms_per_call(batch, batches, b"UsageBatchRecorded"),
            "service_and_database": await cpu_ms_per_call(batch_service_once, batches),
        }
        with replaced(usage, "record_usage_batch", canned_batch_answer):
            figures["batch_1000"]["graphql_no_database"] = await cpu_ms_per_call(
                batch, batches, b"UsageBatchRecorded"
            )
    finally:
        await engine.close_pool()
    return figures


def shares(figures: dict[str, float]) -> list[tuple[str, float]]:
    """The full request split into parts that add up to it."""
    full = figures["full_request"]
    no_db = figures["graphql_no_database"]
    parts = [("service, asyncpg and the database's answers", full - no_db)]
    if "graphql_execution_only" in figures:
        execution = figures["graphql_execution_only"]
        floor = figures["http_floor"]
        parts += [
            ("GraphQL execution (Strawberry, graphql-core), parse/validate cached", execution),
            ("Strawberry's HTTP view, token, JSON in and out", no_db - execution - floor),
            ("Litestar routing and middleware (the /healthz floor)", floor),
        ]
    else:
        parts.append(("HTTP, GraphQL (variables, execution) and the JSON answer", no_db))
    return [(name, round(ms, 3)) for name, ms in parts]


def print_report(figures: dict[str, Any]) -> None:
    for name, title in (("record_usage", "recordUsage"), ("batch_1000", "recordUsageBatch")):
        part = figures[name]
        print(f"\n{title}: {part['full_request']:.3f} ms of server CPU a request (in-process)")
        for label, ms in shares(part):
            print(f"  {ms:7.3f} ms  {100 * ms / part['full_request']:5.1f}%  {label}")
    for name, title in (("record_usage", "recordUsage"), ("batch_1000", "recordUsageBatch")):
        direct = figures[name]["service_and_database"]
        print(
            f"{title}'s service called directly, outside a request: {direct:.3f} ms (the same "
            "statements cost more inside the request's deep stack)"
        )
    extra = figures["record_usage"]["parse_and_validate_uncached"]
    print(f"parsing and validating recordUsage's document without the caches: {extra:.3f} ms")


def breakdown_report(requests: int, batches: int) -> dict[str, Any]:
    with (
        harness.work_directory("meterline-breakdown-") as work,
        harness.postgres_server(work) as server,
        harness.fresh_database(server) as database_url,
    ):
        harness.migrate(database_url)
        figures = asyncio.run(measure(database_url, requests, batches))
    figures["shares"] = {
        name: dict(shares(figures[name])) for name in ("record_usage", "batch_1000")
    }
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=30)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    figures = breakdown_report(args.requests, args.batches)
    print_report(figures)
    harness.write_section("breakdown", figures)


if __name__ == "__main__":
    main()
