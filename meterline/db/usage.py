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
from meterline.billing.plans import MONTHLY_VOLUME_CEILING
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


# The cap-checked rollup upsert, as the CTE `added`, for the rows of `wanted`: (month, event
# type, quantity) with the plan that prices the month (tier, version, included, unit_price)
# and the cap of the events' instant, all decided in Python from the company's plan history
# (billing/plans.py). `company` takes a share lock on the company row and checks that its
# plan_seq is the one that history was read with: a plan change (which locks the row for
# update and bumps plan_seq) either committed before, and the statement finds nothing and is
# run again with the new history, or waits for this one to commit and then re-prices what it
# wrote. The first event of a month copies its month's plan into the row; the upsert locks
# the rows in (month, event type) order, so concurrent recordings are checked one after the
# other against the committed total and two batches never deadlock. A row refused by its cap
# or by the monthly volume ceiling is missing from `added`.
_ROLLUP_UPSERT = """
company AS (SELECT id FROM companies WHERE id = $1 AND plan_seq = {plan_seq} FOR SHARE),
wanted AS ({wanted}),
added AS (
    INSERT INTO usage_rollups AS r
        (company_id, month, event_type, used, tier, version, included, unit_price, cap)
    SELECT $1, w.month, w.event_type, w.quantity, w.tier, w.version, w.included, w.unit_price,
           w.cap
    FROM wanted w, company
    WHERE (w.cap IS NULL OR w.quantity <= w.cap)
       -- past the cap only when the month's row exists: then the conflict decides
       OR EXISTS (SELECT 1 FROM usage_rollups x
                  WHERE x.company_id = $1 AND x.month = w.month AND x.event_type = w.event_type)
    ORDER BY w.month, w.event_type
    ON CONFLICT (company_id, month, event_type)
    DO UPDATE SET used = r.used + EXCLUDED.used
    WHERE (EXCLUDED.cap IS NULL OR r.used + EXCLUDED.used <= EXCLUDED.cap)
      AND r.used + EXCLUDED.used <= {ceiling}
    RETURNING month, event_type, used, tier, version, included, unit_price, cap
)""".replace("{ceiling}", str(MONTHLY_VOLUME_CEILING))

# One recording in ONE statement (so one round trip and no BEGIN/COMMIT): the company's share
# lock, the rollup (the lock every recording of that month and type queues on), then the
# event, then its key; the event and the key are written only if the rollup let it through.
# A key already stored (or being stored) by another request fails the unique index, and the
# statement, rollup included, is undone. Parameters: $1 company, $2 month, $3 event type,
# $4 quantity, $5 event id, $6 occurred_at, $7 idempotency key, $8 metadata, $9 sync state,
# $10 fingerprint, $11 occurredAt as given, $12 plan_seq, $13 tier, $14 version, $15 included,
# $16 unit price, $17 cap.
RECORD_EVENT_SQL = f"""
WITH {
    _ROLLUP_UPSERT.format(
        plan_seq="$12",
        wanted="SELECT $2::date AS month, $3::text AS event_type, $4::bigint AS quantity, "
        "$13::text AS tier, $14::int AS version, $15::bigint AS included, "
        "$16::numeric AS unit_price, $17::bigint AS cap",
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
SELECT (SELECT count(*) FROM company) AS fresh, event.*, added.used, added.tier,
       added.included, added.unit_price, added.cap
FROM (SELECT 1) AS one LEFT JOIN (added CROSS JOIN event) ON true
"""

# A batch's rollups: $3 to $10 are arrays, one element per (month, event type).
ADD_TO_ROLLUPS_SQL = f"""
WITH {
    _ROLLUP_UPSERT.format(
        plan_seq="$2",
        wanted="SELECT * FROM unnest($3::date[], $4::text[], $5::bigint[], $6::text[], "
        "$7::int[], $8::bigint[], $9::numeric[], $10::bigint[]) "
        "AS w(month, event_type, quantity, tier, version, included, unit_price, cap)",
    )
}
SELECT (SELECT count(*) FROM company) AS fresh, added.*
FROM (SELECT 1) AS one LEFT JOIN added ON true
"""


@dataclass(frozen=True)
class Pricing:
    """What a recording writes into its month's rollup if it opens it, and the cap it is
    checked against (decided from the company's plan history at the event's instant)."""

    tier: Tier
    version: int
    allowance: Allowance
    cap: int | None


class PlanChanged(Exception):
    """The company's plan changed after its history was read: read it again and retry."""


class KeyTaken(Exception):
    """The event's idempotency key is stored already: it is a retry (or a misuse) of it."""


async def record_event(
    event: NewEvent,
    *,
    fingerprint: str,
    occurred_at_given: datetime | None,
    pricing: Pricing,
    plan_seq: int,
) -> tuple[StoredEvent, Rollup] | None:
    """Store one event with its key and add it to its month's rollup, all or nothing: the
    stored event and the rollup after it; None (nothing written) when the cap or the monthly
    volume ceiling refuses it; KeyTaken when its idempotency key is stored already (if the
    key's transaction is still open, this waits for it to end, so a concurrent retry never
    records twice); PlanChanged when the company's plan_seq is no longer `plan_seq`."""
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
            plan_seq,
            pricing.tier.value,
            pricing.version,
            pricing.allowance.included,
            pricing.allowance.unit_price,
            pricing.cap,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "idempotency_keys_unique":
            raise
        raise KeyTaken(event.idempotency_key) from exc
    assert row is not None
    if not row["fresh"]:
        raise PlanChanged(str(event.company_id))
    return (_event(row), _rollup(row)) if row["id"] is not None else None


async def add_to_rollups(
    company_id: uuid.UUID,
    totals: Mapping[tuple[date, EventType], tuple[int, Pricing]],
    *,
    plan_seq: int,
) -> dict[tuple[date, EventType], Rollup]:
    """A batch's rollups: each (month, event type) total in one statement. Returns the
    rollups it added to; a group missing from the answer would have passed its cap or the
    ceiling, and the caller must roll the whole transaction back (PlanChanged as well)."""
    groups = sorted(totals.items(), key=lambda item: (item[0][0], item[0][1].value))
    rows = await sql.fetch(
        ADD_TO_ROLLUPS_SQL,
        company_id,
        plan_seq,
        [month for (month, _), _ in groups],
        [event_type.value for (_, event_type), _ in groups],
        [quantity for _, (quantity, _) in groups],
        [p.tier.value for _, (_, p) in groups],
        [p.version for _, (_, p) in groups],
        [p.allowance.included for _, (_, p) in groups],
        [p.allowance.unit_price for _, (_, p) in groups],
        [p.cap for _, (_, p) in groups],
    )
    if not rows or not rows[0]["fresh"]:
        raise PlanChanged(str(company_id))
    return {
        (r["month"], EventType(r["event_type"])): _rollup(r) for r in rows if r["month"] is not None
    }


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


async def reprice_month(
    company_id: uuid.UUID, month: date, pricings: Mapping[EventType, Pricing]
) -> int:
    """A plan change that prices a whole month (free -> paid, a change on the 1st, an event
    replayed later): that month's rollups take its plan again. Returns how many changed."""
    types = sorted(pricings, key=lambda t: t.value)
    status = await sql.execute(
        """
        UPDATE usage_rollups r
        SET tier = u.tier, version = u.version, included = u.included,
            unit_price = u.unit_price, cap = u.cap
        FROM unnest($3::text[], $4::text[], $5::int[], $6::bigint[], $7::numeric[], $8::bigint[])
            AS u(event_type, tier, version, included, unit_price, cap)
        WHERE r.company_id = $1 AND r.month = $2 AND r.event_type = u.event_type
          AND (r.tier, r.version, r.included, r.unit_price, r.cap)
              IS DISTINCT FROM (u.tier, u.version, u.included, u.unit_price, u.cap)
        """,
        company_id,
        month,
        [t.value for t in types],
        [pricings[t].tier.value for t in types],
        [pricings[t].version for t in types],
        [pricings[t].allowance.included for t in types],
        [pricings[t].allowance.unit_price for t in types],
        [pricings[t].cap for t in types],
    )
    return int(status.split()[-1])


async def months_with_usage(company_id: uuid.UUID, from_month: date) -> list[date]:
    rows = await sql.fetch(
        "SELECT DISTINCT month FROM usage_rollups WHERE company_id = $1 AND month >= $2 "
        "ORDER BY month",
        company_id,
        from_month,
    )
    return [r["month"] for r in rows]


async def resync_events(
    company_id: uuid.UUID,
    periods: Sequence[tuple[datetime, datetime, bool]],
    *,
    not_before: datetime,
) -> int:
    """After a plan change: each not-yet-sent event occurring at or after `not_before` (what
    Stripe can still bill) is `pending` if the period it falls in, [start, end), is billed, and
    `local_only` otherwise. Returns how many changed."""
    if not periods:
        return 0
    status = await sql.execute(
        """
        UPDATE usage_events e
        SET sync_state = CASE WHEN u.billed THEN 'pending' ELSE 'local_only' END
        FROM unnest($2::timestamptz[], $3::timestamptz[], $4::bool[]) AS u(f, t, billed)
        WHERE e.company_id = $1 AND e.occurred_at >= $5
          AND e.occurred_at >= u.f AND e.occurred_at < u.t
          AND e.sync_state IN ('local_only', 'pending')
          AND e.sync_state <> CASE WHEN u.billed THEN 'pending' ELSE 'local_only' END
        """,
        company_id,
        [p[0] for p in periods],
        [p[1] for p in periods],
        [p[2] for p in periods],
        not_before,
    )
    return int(status.split()[-1])


async def release_stranded_events(month: date) -> int:
    """`local_only` events from `month` whose instant a billed plan period covers (the
    company's plan history says a subscription bills it): a safety net run by the sync job
    before each run, so such an event still reaches Stripe."""
    status = await sql.execute(
        """
        UPDATE usage_events e SET sync_state = 'pending'
        FROM company_plans p
        WHERE e.sync_state = 'local_only' AND e.month >= $1
          AND p.company_id = e.company_id AND p.billed AND p.effective_from <= e.occurred_at
          AND NOT EXISTS (SELECT 1 FROM company_plans q
                          WHERE q.company_id = p.company_id
                            AND q.effective_from > p.effective_from
                            AND q.effective_from <= e.occurred_at)
        """,
        month,
    )
    return int(status.split()[-1])


async def units_not_in_stripe(company_id: uuid.UUID, month: date) -> int:
    """The month's units recorded for Stripe that Stripe does not hold: not yet sent, being
    sent, failed or unknown."""
    row = await sql.fetchrow(
        "SELECT coalesce(sum(quantity), 0) AS units FROM usage_events "
        "WHERE company_id = $1 AND month = $2 "
        "AND sync_state IN ('pending', 'sending', 'failed', 'unknown')",
        company_id,
        month,
    )
    return int(row["units"]) if row else 0
