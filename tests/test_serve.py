"""`meterline serve --workers N` as an operator runs it: real processes, real PostgreSQL.

The server gets a database of its own on the run's PostgreSQL server (`server_url`), so every
connection named 'meterline' on that database is the server's: the test's own connections carry
another application_name, and the session's pool (also 'meterline') lives in the run's database.
Every wait polls a real condition under a deadline; the server's process group is killed in a
`finally` whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil
import pytest

from meterline.auth import mint_service_token
from meterline.config import Settings
from tests.commands import CLOCK_VARIABLES
from tests.conftest import empty_database, fixed_clocks

READY_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 20.0  # the server's graceful shutdown allows 10 s
POOL_MAX = 4
RECORD = """mutation($input: RecordUsageInput!) { recordUsage(input: $input) {
  __typename ... on UsageRecorded { duplicate usage { eventType used } }
} }"""
CURRENT = "{ currentUsage { eventType used } }"
SERVER_CONNECTIONS = (
    "SELECT pid, client_port, wait_event_type FROM pg_stat_activity "
    "WHERE datname = $1 AND application_name = 'meterline'"
)


@pytest.fixture(scope="module")
async def serve_database(server_url: str) -> AsyncIterator[str]:
    """An empty database the servers under test migrate and use; dropped at the end."""
    async with empty_database(server_url, "meterline_serve") as url:
        yield url


@pytest.fixture
async def watcher(serve_database: str) -> AsyncIterator[asyncpg.Connection]:
    """Reads pg_stat_activity outside any transaction (inside one, it is a frozen snapshot)."""
    connection = await asyncpg.connect(
        serve_database, timeout=10, server_settings={"application_name": "meterline-test"}
    )
    try:
        yield connection
    finally:
        await connection.close()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    data_dir: Path
    database_url: str
    workers: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def messages(self) -> list[str]:
        """The `message` of each JSON log line (migrations print plain lines too)."""
        found = []
        for line in self.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "message" in entry:
                found.append(str(entry["message"]))
        return found

    def service_token(self, company_id: uuid.UUID) -> str:
        # Development mode with no SERVICE_JWT_SECRET: `serve` invented one next to the data dir.
        secret = (self.data_dir.parent / "service_jwt_secret").read_text().strip()
        settings = Settings(service_jwt_secret=secret)
        return mint_service_token(settings, company_id=company_id, ttl=timedelta(minutes=10))

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that serve requests: the worker children, or the one process."""
        if self.workers == 1:
            return [psutil.Process(self.process.pid)]
        children = psutil.Process(self.process.pid).children()
        # Spawned workers run `multiprocessing.spawn`; the resource tracker does not serve.
        return [child for child in children if "spawn_main" in " ".join(child.cmdline())]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(database_url: str, data_dir: Path) -> dict[str, str]:
    """Only what the server needs: nothing from the developer's shell changes its settings.
    The server runs on the machine's clock, which moves with the test's (CLOCK_VARIABLES)."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if name in ("PATH", "HOME", "LANG", "TMPDIR", *CLOCK_VARIABLES)
        or name.startswith(("LC_", "PG"))
    }
    return {
        **kept,
        "METERLINE_ENV": "development",  # secrets unset: the parent invents them for all
        "METERLINE_DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url,
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": str(POOL_MAX),
    }


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, within_s: float = WAIT_TIMEOUT_S
) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def start_server(database_url: str, workers: int, tmp_path: Path) -> Server:
    assert not fixed_clocks(), "`serve` runs on the machine's clock: this test fixed another"
    data_dir = tmp_path / "meterline" / "pgdata"
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    serve_args = ["--workers", str(workers), "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "meterline", "serve", *serve_args],
            env=server_env(database_url, data_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the workers die with it below
        )
    return Server(process, f"http://127.0.0.1:{port}", log_path, data_dir, database_url, workers)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


async def answered_or_exited(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2) as client:

        async def answers() -> bool:
            if server.process.poll() is not None:
                return True  # gone: the caller looks at why
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(answers, "the server to answer /healthz", READY_TIMEOUT_S)


@asynccontextmanager
async def serving(database_url: str, workers: int, tmp_path: Path) -> AsyncIterator[Server]:
    for _attempt in range(3):  # another process may take the free port before the server does
        server = start_server(database_url, workers, tmp_path)
        try:
            await answered_or_exited(server)
            if server.process.poll() is not None:
                if "address already in use" in server.log().lower():
                    continue
                raise AssertionError(
                    f"serve exited with {server.process.returncode}:\n{server.log()}"
                )
            yield server
            return
        finally:
            kill_group(server.process)
    raise AssertionError("no free port for the server after 3 attempts")


async def record(client: httpx.AsyncClient, token: str, quantity: int = 1) -> dict[str, Any]:
    response = await client.post(
        "/graphql",
        json={
            "query": RECORD,
            "variables": {"input": {"eventType": "EMAIL_SENT", "quantity": quantity}},
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["recordUsage"]
    assert result["__typename"] == "UsageRecorded", result
    return result


async def server_connections(watcher: asyncpg.Connection, server: Server) -> list[asyncpg.Record]:
    name = urlsplit(server.database_url).path.lstrip("/")
    return await watcher.fetch(SERVER_CONNECTIONS, name)


async def each_worker_has_its_own_pool(watcher: asyncpg.Connection, server: Server) -> bool:
    """Every worker holds connections of its own to the server's database.

    Over TCP the check is exact: each connection's client port belongs to one worker process.
    Over a Unix socket (the embedded server) there is no client port: each pool opens
    DB_POOL_MIN_SIZE (1) connections at start and grows only under load, so before any request,
    once every worker has started, one connection per worker is what N pools look like.
    """
    workers = server.worker_processes()
    started = server.messages().count("Application startup complete.")  # the pool is open
    if len(workers) != server.workers or started != server.workers:
        return False
    connections = await server_connections(watcher, server)
    db = urlsplit(server.database_url)
    if not db.hostname:
        return len(connections) == server.workers
    db_port = db.port or 5432
    owners: dict[int, int] = {}
    for worker in workers:
        for connection in worker.net_connections(kind="tcp"):
            if connection.raddr and connection.raddr.port == db_port:
                owners[connection.laddr.port] = worker.pid
    owning = {owners.get(row["client_port"]) for row in connections}
    return None not in owning and owning == {worker.pid for worker in workers}


async def exited(process: subprocess.Popen[bytes]) -> int:
    async def gone() -> bool:
        return process.poll() is not None

    await wait_until(gone, "the server to exit", EXIT_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode


# --- the tests ---------------------------------------------------------------------------------


async def test_two_workers_each_with_its_own_pool_and_the_parents_settings(
    serve_database: str, watcher: asyncpg.Connection, tmp_path: Path
) -> None:
    async with serving(serve_database, 2, tmp_path) as server:
        assert (
            f"2 worker processes, each with its own database pool of 1 to {POOL_MAX} connections"
            in server.log()
        )
        assert f"up to {2 * POOL_MAX} connections to PostgreSQL in all" in server.log()
        await wait_until(
            lambda: each_worker_has_its_own_pool(watcher, server), "a pool in each of 2 workers"
        )
        # Every worker rebuilds the settings the parent resolved (the invented development
        # secrets above all): what it was started with is what it reads its settings from.
        invented = server.data_dir.parent
        for worker in server.worker_processes():
            settings = Settings.from_env(worker.environ())
            assert settings.jwt_secret == (invented / "jwt_secret").read_text().strip()
            assert (
                settings.service_jwt_secret == (invented / "service_jwt_secret").read_text().strip()
            )
            assert settings.database_url == serve_database
            assert (settings.host, settings.port) == ("127.0.0.1", urlsplit(server.base_url).port)

        company_id = uuid.uuid4()
        token = server.service_token(company_id)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await record(client, token, quantity=3))["usage"]["used"] == 3
            response = await client.post(
                "/graphql", json={"query": CURRENT}, headers={"Authorization": f"Bearer {token}"}
            )
        assert response.status_code == 200, response.text
        meters = {m["eventType"]: m["used"] for m in response.json()["data"]["currentUsage"]}
        assert meters["EMAIL_SENT"] == 3


@pytest.mark.parametrize("workers", [2, 1])
async def test_sigterm_lets_the_request_in_flight_finish_then_closes_the_pools(
    serve_database: str, watcher: asyncpg.Connection, tmp_path: Path, workers: int
) -> None:
    async with serving(serve_database, workers, tmp_path) as server:
        # Every worker up (a worker still importing would die of SIGTERM, not shut down).
        await wait_until(
            lambda: each_worker_has_its_own_pool(watcher, server), "a pool in each worker"
        )
        company_id = uuid.uuid4()
        token = server.service_token(company_id)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            assert (await record(client, token))["usage"]["used"] == 1  # the rollup row exists

        locker = await asyncpg.connect(
            serve_database, timeout=10, server_settings={"application_name": "meterline-test"}
        )
        in_flight: asyncio.Task[dict[str, Any]] | None = None
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.fetch(
                "SELECT used FROM usage_rollups WHERE company_id = $1 FOR UPDATE", company_id
            )

            async def record_in_flight() -> dict[str, Any]:
                async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                    return await record(client, token)

            in_flight = asyncio.create_task(record_in_flight())

            async def blocked_on_the_lock() -> bool:
                assert not in_flight.done(), in_flight  # it cannot finish while the lock is held
                rows = await server_connections(watcher, server)
                return any(row["wait_event_type"] == "Lock" for row in rows)

            await wait_until(blocked_on_the_lock, "the request to wait on the row lock")

            server.process.send_signal(signal.SIGTERM)

            async def shutting_down() -> bool:
                messages = server.messages()
                return (
                    messages.count("Shutting down") == workers
                    and "Waiting for connections to close. (CTRL+C to force quit)" in messages
                )

            await wait_until(shutting_down, "every worker to start its graceful shutdown")
            assert not in_flight.done()
            await transaction.rollback()  # the lock goes: the request carries on

            result = await asyncio.wait_for(in_flight, WAIT_TIMEOUT_S)
            assert result == {
                "__typename": "UsageRecorded",
                "duplicate": False,
                "usage": {"eventType": "EMAIL_SENT", "used": 2},
            }
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
            await locker.close()

        assert await exited(server.process) == 0, server.log()
        # The lifespan's shutdown, which closes the pool, ran in every worker.
        assert server.messages().count("Application shutdown complete.") == workers, server.log()

        async def no_server_connection() -> bool:
            return not await server_connections(watcher, server)

        await wait_until(no_server_connection, "the server's connections to be gone")
        row = await watcher.fetchrow(
            "SELECT used FROM usage_rollups WHERE company_id = $1", company_id
        )
        assert row is not None and row["used"] == 2


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_serve_refuses_a_worker_count_below_one(count: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meterline", "serve", f"--workers={count}"],
        env=server_env("postgresql://nowhere.invalid/none", tmp_path / "pgdata"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "--workers" in result.stderr
    expected = "is not a whole number" if count == "two" else "at least 1 worker process"
    assert expected in result.stderr
