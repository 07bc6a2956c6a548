"""Running SQL with asyncpg `$n` placeholders on the engine's pool or current transaction.

Repositories use this rather than building strings: `async with DB.transaction():` (Piccolo)
still scopes every call made inside it to one connection and one transaction, and
`async with pinned():` runs the statements of one short piece of work on one pooled connection
without a transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from meterline.db.engine import DB

# The pinned connection and the task that pinned it: a task started inside inherits the
# context, but must not use the connection at the same time (asyncpg runs one at a time).
_pinned: ContextVar[tuple[asyncio.Task[Any], PoolConnectionProxy] | None] = ContextVar(
    "pinned_connection", default=None
)


def _pinned_here() -> PoolConnectionProxy | None:
    pinned = _pinned.get()
    return pinned[1] if pinned is not None and pinned[0] is asyncio.current_task() else None


@asynccontextmanager
async def pinned() -> AsyncIterator[None]:
    """The statements run inside use one pooled connection, each in its own implicit
    transaction. A pool release costs a round trip (asyncpg resets the connection), so a hot
    path of several statements takes the connection once. Run its statements one after the
    other (tasks started inside use the pool) and open no transaction inside: that would hold
    a second connection."""
    task = asyncio.current_task()
    if _pinned_here() is not None or DB.current_transaction.get() is not None or DB.pool is None:
        yield
        return
    assert task is not None
    async with DB.pool.acquire() as connection:
        token = _pinned.set((task, connection))
        try:
            yield
        finally:
            _pinned.reset(token)


@asynccontextmanager
async def _connection() -> AsyncIterator[asyncpg.Connection | PoolConnectionProxy]:
    transaction = DB.current_transaction.get()
    if transaction is not None:
        yield transaction.connection
    elif (connection := _pinned_here()) is not None:
        yield connection
    elif DB.pool is not None:
        async with DB.pool.acquire() as connection:
            yield connection
    else:  # CLI commands that run one statement or two
        single = await DB.get_new_connection()
        try:
            yield single
        finally:
            await single.close()


# A statement cancelled by the statement timeout (or an operator), a lock not granted, a
# deadlock lost: nothing was written, and the same work may succeed a moment later.
_BUSY = (
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.DeadlockDetectedError,
)


def is_database_busy(exc: BaseException | None) -> bool:
    return isinstance(exc, _BUSY)


async def fetch(query: str, *args: Any) -> list[asyncpg.Record]:
    async with _connection() as connection:
        return list(await connection.fetch(query, *args))


async def fetchrow(query: str, *args: Any) -> asyncpg.Record | None:
    async with _connection() as connection:
        return await connection.fetchrow(query, *args)


async def execute(query: str, *args: Any) -> str:
    async with _connection() as connection:
        return str(await connection.execute(query, *args))


async def copy_records(
    table: str, columns: Sequence[str], records: Iterable[Sequence[Any]]
) -> None:
    """COPY rows in (binary): many times faster than INSERT for the rows of a batch."""
    async with _connection() as connection:
        await connection.copy_records_to_table(table, records=records, columns=columns)
