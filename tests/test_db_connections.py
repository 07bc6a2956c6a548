"""Pooled connections: sql.pinned() shares one among the statements of one piece of work, and
only them; a connection returns to the pool without session state (the pool skips asyncpg's
reset query, so nothing may leave any)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from meterline.db import companies, sql
from meterline.db.engine import DB


async def backend() -> int:
    row = await sql.fetchrow("SELECT pg_backend_pid() AS pid")
    assert row is not None
    pid: int = row["pid"]
    return pid


async def test_statements_inside_share_one_connection(database_url: str) -> None:
    async with sql.pinned():
        first = await backend()
        async with sql.pinned():  # nested: the same connection
            assert await backend() == first
        assert await backend() == first


async def test_tasks_started_inside_use_connections_of_their_own(database_url: str) -> None:
    """asyncpg runs one statement at a time on a connection: tasks that inherit the pinned
    context must not share it (they would fail with "another operation is in progress")."""
    async with sql.pinned():
        mine = await backend()
        theirs = await asyncio.gather(*(asyncio.ensure_future(backend()) for _ in range(3)))
        assert mine not in theirs
        assert await backend() == mine


async def test_a_transaction_left_open_is_rolled_back_on_release(database_url: str) -> None:
    assert DB.pool is not None
    async with DB.pool.acquire() as connection:
        await connection.execute("BEGIN")
        await connection.execute("CREATE TEMP TABLE left_behind (n int) ON COMMIT DROP")
        backend = await connection.fetchval("SELECT pg_backend_pid()")
    async with DB.pool.acquire() as connection:
        assert await connection.fetchval("SELECT pg_backend_pid()") == backend  # the same one
        assert not connection.is_in_transaction()
        assert await connection.fetchval("SELECT to_regclass('pg_temp.left_behind')") is None


async def advisory_locks_held() -> int:
    row = await sql.fetchrow(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    assert row is not None
    held: int = row["n"]
    return held


async def test_a_companys_change_lock_is_released_whatever_happens(database_url: str) -> None:
    company_id = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with companies.changes_serialised(company_id):
            assert await advisory_locks_held() == 1
            raise RuntimeError("the change failed")
    assert await advisory_locks_held() == 0
    entered = asyncio.Event()

    async def change() -> None:
        async with companies.changes_serialised(company_id):
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.ensure_future(change())
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await advisory_locks_held() == 0
    async with companies.changes_serialised(company_id):  # free again
        assert await advisory_locks_held() == 1
