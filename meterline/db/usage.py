"""SQL of the usage tables: usage_events, idempotency_keys and usage_rollups.

They are written together, in the one statement of a recording or the one transaction of a
batch (see services/usage.py), so the rollup is always exactly the sum of the events.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from meterline.billing.catalog import Allowance, EventType, Tier
from meterline.db import sql

_EVENT_COLUMNS = (
    "id, company_id, event_type, quantity, occurred_at, month, idempotency_key, metadata, "
    "sync_state, recorded_at"
)


@dataclass(frozen=True)
class NewEvent:
    id: uuid.UUID
    company_id: uuid.UUID
    event_type: EventType
    quantity: int
    occurred_at: datetime
    month: date
    idempotency_key: str | None
    metadata: dict[str, Any] | None
    sync_state: str


@dataclass(frozen=True)
class StoredEvent(NewEvent):
    recorded_at: datetime


def _event(row: asyncpg.Record) -> StoredEvent:
    metadata = row["metadata"]
    return StoredEvent(
        id=row["id"],
        company_id=row["company_id"],
        event_type=EventType(row["event_type"]),
        quantity=row["quantity"],
        occurred_at=row["occurred_at"],
        month=row["month"],
        idempotency_key=row["idempotency_key"],
        metadata=json.loads(metadata) if metadata is not None else None,
        sync_state=row["sync_state"],
        recorded_at=row["recorded_at"],
    )


async def insert_events(events: Sequence[NewEvent]) -> list[StoredEvent]:
    """A batch's events, by COPY. Call inside the batch's transaction."""
    recorded_at = await transaction_time()
    await sql.copy_records(
        "usage_events",
        _EVENT_COLUMNS.replace(" ", "").split(","),
        (
            (
                e.id,
                e.company_id,
                e.event_type.value,
                e.quantity,
                e.occurred_at,
                e.month,
                e.idempotency_key,
                json.dumps(e.metadata) if e.metadata is not None else None,
                e.sync_state,
                recorded_at,
            )
            for e in events
        ),
    )
    return [StoredEvent(**vars(e), recorded_at=recorded_at) for e in events]


async def transaction_time() -> datetime:
    """now() of the current transaction: what a column's default would have stored."""
    row = await sql.fetchrow("SELECT now() AS now")
    assert row is not None
    now: datetime = row["now"]
    return now


@dataclass(frozen=True)
class KeyRecord:
    """An idempotency key, the event it recorded and what a retry is compared with."""

    event: StoredEvent
    fingerprint: str
    occurred_at_given: datetime | None


@dataclass(frozen=True)
class KeyClaim:
    key: str
    event_id: uuid.UUID
    fingerprint: str
    occurred_at_given: datetime | None


async def claim_idempotency_keys(company_id: uuid.UUID, claims: Sequence[KeyClaim]) -> int:
    """A batch's keys: returns how many are ours now; fewer than asked
    means another request holds some, and the caller must roll back. Keys are taken in sorted
    order, so two batches sharing keys wait for each other instead of deadlocking."""
    ordered = sorted(claims, key=lambda c: c.key)
    rows = await sql.fetch(
        "INSERT INTO idempotency_keys (company_id, key, event_id, fingerprint, occurred_at_given) "
        "SELECT $1, k, e, f, o FROM unnest($2::text[], $3::uuid[], $4::text[], "
        "$5::timestamptz[]) WITH ORDINALITY AS u(k, e, f, o, n) ORDER BY n "
        "ON CONFLICT (company_id, key) DO NOTHING RETURNING key",
        company_id,
        [c.key for c in ordered],
        [c.event_id for c in ordered],
        [c.fingerprint for c in ordered],
        [c.occurred_at_given for c in ordered],
    )
    return len(rows)


_KEY_LOOKUP = (
    "SELECT {columns}, k.key AS key_, k.fingerprint, k.occurred_at_given "
    "FROM idempotency_keys k "
    "JOIN usage_events e ON e.company_id = k.company_id AND e.id = k.event_id "
    "WHERE k.company_id = $1 AND {condition}"
).replace("{columns}", ", ".join(f"e.{c.strip()}" for c in _EVENT_COLUMNS.split(",")))


def _key_record(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(_event(row), row["fingerprint"], row["occurred_at_given"])


async def find_idempotency_key(company_id: uuid.UUID, key: str) -> KeyRecord | None:
    row = await sql.fetchrow(_KEY_LOOKUP.format(condition="k.key = $2"), company_id, key)
    return _key_record(row) if row else None


async def find_idempotency_keys(company_id: uuid.UUID, keys: Sequence[str]) -> dict[str, KeyRecord]:
    """The keys of `keys` already used, each with the event it recorded."""
    if not keys:
        return {}
    rows = await sql.fetch(
        _KEY_LOOKUP.format(condition="k.key = ANY($2::text[])"), company_id, keys
    )
    return {r["key_"]: _key_record(r) for r in rows}


@dataclass(frozen=True)
class Rollup:
    """A month's total of one event type, with the allowance that prices that month."""

    used: int
    tier: Tier
    allowance: Allowance
    cap: int | None


def _rollup(row: asyncpg.Record) -> Rollup:
    return Rollup(
        used=int(row["used"]),
        tier=Tier(row["tier"]),
        allowance=Allowance(row["included"], Decimal(row["unit_price"])),
        cap=row["cap"],
    )


# The cap-checked rollup upsert, as the CTE `added`, for the (month, event type, quantity) rows
# of `wanted`. The first event of a month copies the company's current allowance (and cap) into
# the row; later ones are checked against that copy, so the month keeps one price. The upsert
# locks the rows, in (month, event type) order, so concurrent recordings are checked one after
# the other against the committed total, and two batches never deadlock. A row refused by its
# cap is missing from `added`.
_ROLLUP_UPSERT = """
wanted AS ({wanted}),
plan AS (
    SELECT w.month, w.event_type, w.quantity, t.name AS tier, a.included, a.unit_price,
           CASE WHEN t.hard_cap THEN a.included END AS cap
    FROM wanted w
    JOIN companies c ON c.id = $1
    JOIN tiers t ON t.name = c.tier
    JOIN tier_allowances a ON a.tier = t.name AND a.event_type = w.event_type
),
added AS (
    INSERT INTO usage_rollups AS r
        (company_id, month, event_type, used, tier, included, unit_price, cap)
    SELECT $1, p.month, p.event_type, p.quantity, p.tier, p.included, p.unit_price,
           -- past the current cap only when the month's row exists (next line): then this row
           -- is never stored, but it must still pass the CHECK on cap to reach the conflict,
           -- where the month's own cap decides
           CASE WHEN p.quantity <= p.cap THEN p.cap END
    FROM plan p
    WHERE p.cap IS NULL OR p.quantity <= p.cap
       OR EXISTS (SELECT 1 FROM usage_rollups x
                  WHERE x.company_id = $1 AND x.month = p.month AND x.event_type = p.event_type)
    ORDER BY p.month, p.event_type
    ON CONFLICT (company_id, month, event_type)
    DO UPDATE SET used = r.used + EXCLUDED.used
    WHERE r.cap IS NULL OR r.used + EXCLUDED.used <= r.cap
    RETURNING month, event_type, used, tier, included, unit_price, cap
)"""

# One recording in ONE statement (so one round trip and no BEGIN/COMMIT): the rollup first
# (the lock every recording of that month and type queues on), then the event, then its key;
# the event and the key are written only if the cap let the rollup through. A key already
# stored (or being stored) by another request fails the unique index, and the statement,
# rollup included, is undone. Parameters: $1 company, $2 month, $3 event type, $4 quantity,
# $5 event id, $6 occurred_at, $7 idempotency key, $8 metadata, $9 sync state,
# $10 fingerprint, $11 occurredAt as given.
RECORD_EVENT_SQL = f"""
WITH {
    _ROLLUP_UPSERT.format(
        wanted="SELECT $2::date AS month, $3::text AS event_type, $4::bigint AS quantity"
    )
},
event AS (
    INSERT INTO usage_events (id, company_id, event_type, quantity, occurred_at, month,
                              idempotency_key, metadata, sync_state)
    SELECT $5, $1, $3, $4, $6, $2, $7, $8, $9 FROM added
    RETURNING {_EVENT_COLUMNS}
),
key AS (
    INSERT INTO idempotency_keys (company_id, key, event_id, fingerprint, occurred_at_given)
    SELECT $1, $7, event.id, $10, $11 FROM event WHERE $7::text IS NOT NULL
)
SELECT event.*, added.used, added.tier, added.included, added.unit_price, added.cap
FROM added, event
"""

# A batch's rollups: $2, $3 and $4 are arrays, one element per (month, event type).
ADD_TO_ROLLUPS_SQL = f"""
WITH {
    _ROLLUP_UPSERT.format(
        wanted="SELECT * FROM unnest($2::date[], $3::text[], $4::bigint[]) "
        "AS w(month, event_type, quantity)"
    )
}
SELECT * FROM added
"""


class KeyTaken(Exception):
    """The event's idempotency key is stored already: it is a retry (or a misuse) of it."""


async def record_event(
    event: NewEvent, *, fingerprint: str, occurred_at_given: datetime | None
) -> tuple[StoredEvent, Rollup] | None:
    """Store one event with its key and add it to its month's rollup, all or nothing: the
    stored event and the rollup after it; None (nothing written) when the month's hard cap
    refuses it; KeyTaken when its idempotency key is stored already (if the key's transaction
    is still open, this waits for it to end, so a concurrent retry never records twice)."""
    try:
        row = await sql.fetchrow(
            RECORD_EVENT_SQL,
            event.company_id,
            event.month,
            event.event_type.value,
            event.quantity,
            event.id,
            event.occurred_at,
            event.idempotency_key,
            json.dumps(event.metadata) if event.metadata is not None else None,
            event.sync_state,
            fingerprint,
            occurred_at_given,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "idempotency_keys_unique":
            raise
        raise KeyTaken(event.idempotency_key) from exc
    return (_event(row), _rollup(row)) if row else None


async def add_to_rollups(
    company_id: uuid.UUID, totals: Mapping[tuple[date, EventType], int]
) -> dict[tuple[date, EventType], Rollup]:
    """A batch's rollups: each (month, event type) total in one statement. Returns the
    rollups it added to; a group missing from the answer would have passed its month's cap,
    and the caller must roll the whole transaction back."""
    groups = sorted(totals.items(), key=lambda item: (item[0][0], item[0][1].value))
    rows = await sql.fetch(
        ADD_TO_ROLLUPS_SQL,
        company_id,
        [month for (month, _), _ in groups],
        [event_type.value for (_, event_type), _ in groups],
        [quantity for _, quantity in groups],
    )
    return {(r["month"], EventType(r["event_type"])): _rollup(r) for r in rows}


async def rollup(company_id: uuid.UUID, month: date, event_type: EventType) -> Rollup | None:
    row = await sql.fetchrow(
        "SELECT used, tier, included, unit_price, cap FROM usage_rollups "
        "WHERE company_id = $1 AND month = $2 AND event_type = $3",
        company_id,
        month,
        event_type.value,
    )
    return _rollup(row) if row else None


async def rollups(
    company_id: uuid.UUID, first_month: date, last_month: date
) -> dict[tuple[date, EventType], Rollup]:
    """The rollups of months in [first_month, last_month], by (month, event type)."""
    rows = await sql.fetch(
        "SELECT month, event_type, used, tier, included, unit_price, cap FROM usage_rollups "
        "WHERE company_id = $1 AND month BETWEEN $2 AND $3",
        company_id,
        first_month,
        last_month,
    )
    return {(r["month"], EventType(r["event_type"])): _rollup(r) for r in rows}


async def first_month(company_id: uuid.UUID) -> date | None:
    row = await sql.fetchrow(
        "SELECT min(month) AS month FROM usage_rollups WHERE company_id = $1", company_id
    )
    return row["month"] if row else None


async def list_events(
    company_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    event_type: EventType | None,
    month: date | None,
) -> list[StoredEvent]:
    """Newest first by (occurred_at, id): a keyset page, stable while events are added."""
    conditions = ["company_id = $1"]
    args: list[Any] = [company_id]
    if event_type is not None:
        args.append(event_type.value)
        conditions.append(f"event_type = ${len(args)}")
    if month is not None:
        args.append(month)
        conditions.append(f"month = ${len(args)}")
    if after is not None:
        args.extend(after)
        conditions.append(f"(occurred_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    rows = await sql.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM usage_events WHERE {' AND '.join(conditions)} "
        f"ORDER BY occurred_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
    return [_event(r) for r in rows]


async def release_local_events(company_id: uuid.UUID, from_month: date) -> int:
    """Free -> paid: the company's `local_only` events of `from_month` and later become
    `pending`, for the sync to send. Returns how many."""
    status = await sql.execute(
        "UPDATE usage_events SET sync_state = 'pending' "
        "WHERE company_id = $1 AND month >= $2 AND sync_state = 'local_only'",
        company_id,
        from_month,
    )
    return int(status.split()[-1])


async def reprice_rollups(company_id: uuid.UUID, from_month: date) -> int:
    """A tier change that prices a whole month (free -> paid, or a change on the 1st): the
    months from `from_month` on are priced by the company's current tier (its allowance and
    cap are copied into those months' rollups again). Returns how many."""
    status = await sql.execute(
        """
        UPDATE usage_rollups r
        SET tier = t.name, included = a.included, unit_price = a.unit_price,
            -- what is recorded stays recorded: a capped month never starts above its cap
            cap = CASE WHEN t.hard_cap THEN greatest(a.included, r.used) END
        FROM companies c
        JOIN tiers t ON t.name = c.tier
        JOIN tier_allowances a ON a.tier = t.name
        WHERE c.id = $1 AND r.company_id = c.id AND r.month >= $2 AND a.event_type = r.event_type
        """,
        company_id,
        from_month,
    )
    return int(status.split()[-1])


async def withhold_pending_events(company_id: uuid.UUID, from_month: date) -> int:
    """Paid -> free on the 1st: the month's events not yet sent stay here (no subscription
    would bill them)."""
    status = await sql.execute(
        "UPDATE usage_events SET sync_state = 'local_only' "
        "WHERE company_id = $1 AND month >= $2 AND sync_state = 'pending'",
        company_id,
        from_month,
    )
    return int(status.split()[-1])


async def release_stranded_events(month: date) -> int:
    """`local_only` events of companies that pay, from `month` (and from their paid start):
    recorded by a request that read the company as free just before its subscription
    arrived. The sync job runs this first, so such an event still reaches Stripe."""
    status = await sql.execute(
        """
        UPDATE usage_events e SET sync_state = 'pending'
        FROM companies c
        WHERE c.stripe_customer_id IS NOT NULL AND c.tier <> $2
          AND e.company_id = c.id AND e.sync_state = 'local_only' AND e.month >= $1
          AND e.month >= date_trunc('month', coalesce(c.usage_stamped_from, '-infinity')
                                    AT TIME ZONE 'UTC')::date
        """,
        month,
        Tier.FREE.value,
    )
    return int(status.split()[-1])
