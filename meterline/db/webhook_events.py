"""SQL of `webhook_events`: every Stripe event received, stored once by its id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from meterline.db import sql

_COLUMNS = (
    "id, source, type, object_id, created, payload, status, attempts, applied_count, "
    "last_error, received_at, applied_at"
)


@dataclass(frozen=True)
class StoredWebhookEvent:
    id: str
    source: str  # snapshot | thin
    type: str
    object_id: str | None
    created: datetime
    payload: dict[str, Any]
    status: str  # received | applied | ignored | failed
    attempts: int
    applied_count: int
    last_error: str | None
    received_at: datetime
    applied_at: datetime | None


def _event(row: asyncpg.Record) -> StoredWebhookEvent:
    fields = {name: row[name] for name in StoredWebhookEvent.__dataclass_fields__}
    fields["payload"] = json.loads(row["payload"])
    return StoredWebhookEvent(**fields)


async def store(
    *,
    event_id: str,
    source: str,
    event_type: str,
    object_id: str | None,
    created: datetime,
    payload: dict[str, Any],
    status: str,
    received_at: datetime,
) -> tuple[StoredWebhookEvent, bool]:
    """Insert the event unless its id is stored already: the stored row, and whether it is new.
    `received_at` comes from the app's clock: the crash-recovery and retention rules read it."""
    row = await sql.fetchrow(
        f"""
        WITH inserted AS (
            INSERT INTO webhook_events
                (id, source, type, object_id, created, payload, status, received_at)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)
            ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}
        )
        SELECT {_COLUMNS}, true AS inserted FROM inserted
        UNION ALL
        SELECT {_COLUMNS}, false FROM webhook_events
        WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM inserted)
        """,
        event_id,
        source,
        event_type,
        object_id,
        created,
        json.dumps(payload),
        status,
        received_at,
    )
    if row is None:  # inserted concurrently and not yet visible to this snapshot
        row = await sql.fetchrow(
            f"SELECT {_COLUMNS}, false AS inserted FROM webhook_events WHERE id = $1", event_id
        )
    assert row is not None
    return _event(row), bool(row["inserted"])


async def get(event_id: str) -> StoredWebhookEvent | None:
    row = await sql.fetchrow(f"SELECT {_COLUMNS} FROM webhook_events WHERE id = $1", event_id)
    return _event(row) if row else None


async def lock(event_id: str) -> StoredWebhookEvent | None:
    """The event row, locked until the end of the caller's transaction: one delivery of an
    event applies it while a concurrent one waits and then finds it applied."""
    row = await sql.fetchrow(
        f"SELECT {_COLUMNS} FROM webhook_events WHERE id = $1 FOR UPDATE", event_id
    )
    return _event(row) if row else None


async def mark_applied(event_id: str, *, status: str, now: datetime, note: str | None) -> None:
    """`applied` (or `ignored`, with the reason in `note`), in the applying transaction."""
    await sql.execute(
        "UPDATE webhook_events SET status = $2, attempts = attempts + 1, "
        "applied_count = applied_count + 1, applied_at = $3, last_error = $4 WHERE id = $1",
        event_id,
        status,
        now,
        note,
    )


async def mark_failed(event_id: str, *, error: str) -> None:
    """Applying failed: Stripe gets a 500 and delivers it again; the error stays here. An event
    applied meanwhile (by a concurrent delivery) stays applied."""
    await sql.execute(
        "UPDATE webhook_events SET status = 'failed', attempts = attempts + 1, last_error = $2 "
        "WHERE id = $1 AND status IN ('received', 'failed')",
        event_id,
        error[:2000],
    )


async def unsettled_ids(*, received_before: datetime, limit: int) -> list[str]:
    """Events to apply again: `failed` ones, and `received` ones left by a process that died
    while applying them (received before `received_before`)."""
    rows = await sql.fetch(
        "SELECT id FROM webhook_events WHERE status = 'failed' "
        "OR (status = 'received' AND received_at < $1) ORDER BY created, id LIMIT $2",
        received_before,
        limit,
    )
    return [r["id"] for r in rows]


# Settled: applied, or stored as ignored. `received` (being applied, or left by a crash) and
# `failed` events are never pruned: they are work still to do.
SETTLED = ("applied", "ignored")


async def prune_settled(*, received_before: datetime, limit: int) -> int:
    """Delete up to `limit` settled events received before the moment, oldest first; events a
    concurrent delivery or replay holds are skipped (their next run takes them)."""
    status = await sql.execute(
        """
        DELETE FROM webhook_events WHERE id IN (
            SELECT id FROM webhook_events
            WHERE status = ANY($3) AND received_at < $1
            ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED
        ) AND status = ANY($3)
        """,
        received_before,
        limit,
        list(SETTLED),
    )
    return int(status.split()[-1])  # "DELETE n"


async def count_unsettled_before(received_before: datetime) -> int:
    """Events older than the retention that are kept because they are not settled."""
    row = await sql.fetchrow(
        "SELECT count(*) AS n FROM webhook_events WHERE NOT (status = ANY($2)) "
        "AND received_at < $1",
        received_before,
        list(SETTLED),
    )
    return int(row["n"]) if row else 0


async def recent(limit: int, status: str | None = None) -> list[StoredWebhookEvent]:
    rows = await sql.fetch(
        f"SELECT {_COLUMNS} FROM webhook_events WHERE $2::text IS NULL OR status = $2 "
        f"ORDER BY received_at DESC, id LIMIT $1",
        limit,
        status,
    )
    return [_event(r) for r in rows]


async def count_unsettled() -> dict[str, int]:
    """Events not applied: `failed`, and `received` (being applied, or left by a crash)."""
    rows = await sql.fetch(
        "SELECT status, count(*) AS n FROM webhook_events "
        "WHERE status IN ('failed', 'received') GROUP BY status"
    )
    return {r["status"]: int(r["n"]) for r in rows}
