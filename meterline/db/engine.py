"""The one PostgreSQL engine and its pool's lifecycle.

Every table is bound to `DB`. Its connection settings are filled in at start-up (`open_pool`), so
that the URL can come from the environment or from the embedded server started at run time.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from piccolo.engine.postgres import PostgresEngine

logger = logging.getLogger(__name__)

DB = PostgresEngine(config={})


def connection_config(database_url: str, *, statement_timeout_ms: int = 0) -> dict[str, Any]:
    """asyncpg connect arguments. Sessions run in UTC whatever the server's default zone."""
    server_settings = {"timezone": "UTC", "application_name": "meterline"}
    if statement_timeout_ms:
        server_settings["statement_timeout"] = str(statement_timeout_ms)
    return {"dsn": database_url, "server_settings": server_settings}


def configure(database_url: str, *, statement_timeout_ms: int = 0) -> None:
    DB.config = connection_config(database_url, statement_timeout_ms=statement_timeout_ms)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset: nothing beyond asyncpg's own rollback of a transaction left open.

    asyncpg's default runs `RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()` at
    every release: a round trip on every request's connection, for session state Meterline
    never leaves on a pooled connection (no SET, LISTEN or cursors; session advisory locks are
    taken on connections of their own, outside the pool).
    """


async def open_pool(
    database_url: str, *, min_size: int, max_size: int, statement_timeout_ms: int = 0
) -> None:
    configure(database_url, statement_timeout_ms=statement_timeout_ms)
    if DB.pool is None:
        await DB.start_connection_pool(min_size=min_size, max_size=max_size, reset=_keep_session)


async def close_pool() -> None:
    if DB.pool is not None:
        await DB.close_connection_pool()


async def ping() -> bool:
    try:
        rows = await DB.run_ddl("SELECT 1 AS ok")
    except Exception:  # any failure means "not ready"; the reason is logged
        logger.warning("database ping failed", exc_info=True)
        return False
    return bool(rows and rows[0]["ok"] == 1)
