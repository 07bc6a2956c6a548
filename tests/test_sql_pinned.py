"""sql.pinned(): the statements of one piece of work share one pooled connection, and only
they do."""

from __future__ import annotations

import asyncio

from meterline.db import sql


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
