"""Running SQL with asyncpg `$n` placeholders on the engine's pool or current transaction.

Repositories use this rather than building strings: `async with DB.transaction():` (Piccolo)
still scopes every call made inside it to one connection and one transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from meterline.db.engine import DB


@asynccontextmanager
async def _connection() -> AsyncIterator[asyncpg.Connection | PoolConnectionProxy]:
    transaction = DB.current_transaction.get()
    if transaction is not None:
        yield transaction.connection
    elif DB.pool is not None:
        async with DB.pool.acquire() as connection:
            yield connection
    else:  # CLI commands that run one statement or two
        single = await DB.get_new_connection()
        try:
            yield single
        finally:
            await single.close()


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
