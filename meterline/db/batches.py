"""SQL of `usage_batches` (and the sync states of the events they carry).

A batch moves sending -> sent | failed | unknown. While `sending`, `lease_until` says when it
is due: a worker that claims or re-takes it pushes the lease forward; a crash lets it pass, and
a transient failure sets it to the next retry. Every transition is guarded by `state =
'sending'`, so a late worker cannot undo another's outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

from meterline.billing.catalog import EventType
from meterline.billing.periods import floor_to_second, month_end, month_of
from meterline.db import sql
from meterline.db.engine import DB

_COLUMNS = (
    "id, company_id, stripe_customer_id, event_type, event_name, month, value, timestamp, "
    "state, attempts, lease_until, created_at, sent_at, last_error"
)


@dataclass(frozen=True)
class Batch:
    id: uuid.UUID
    company_id: uuid.UUID
    stripe_customer_id: str
    event_type: EventType
    event_name: str
    month: date
    value: int
    timestamp: datetime
    state: str
    attempts: int
    lease_until: datetime
    created_at: datetime
    sent_at: datetime | None
    last_error: str | None

    @property
    def identifier(self) -> str:
        """Stripe's de-duplication key for this batch (≤ 100 characters)."""
        return f"mlb_{self.id.hex}"


def _batch(row: asyncpg.Record) -> Batch:
    return Batch(
        id=row["id"],
        company_id=row["company_id"],
        stripe_customer_id=row["stripe_customer_id"],
        event_type=EventType(row["event_type"]),
        event_name=row["event_name"],
        month=row["month"],
        value=int(row["value"]),
        timestamp=row["timestamp"],
        state=row["state"],
        attempts=row["attempts"],
        lease_until=row["lease_until"],
        created_at=row["created_at"],
        sent_at=row["sent_at"],
        last_error=row["last_error"],
    )


@dataclass(frozen=True)
class Group:
    company_id: uuid.UUID
    event_type: EventType
    month: date


async def pending_groups(limit: int, company_ids: list[uuid.UUID] | None = None) -> list[Group]:
    """(company, event type, month) groups with pending events and no batch in flight for that
    (company, event type), oldest month first (its invoice closes first), then oldest event
    first; of `company_ids` only, when given."""
    rows = await sql.fetch(
        """
        SELECT e.company_id, e.event_type, e.month
        FROM usage_events e
        WHERE e.sync_state = 'pending'
          AND ($2::uuid[] IS NULL OR e.company_id = ANY($2))
          AND NOT EXISTS (SELECT 1 FROM usage_batches b
                          WHERE b.company_id = e.company_id AND b.event_type = e.event_type
                            AND b.state = 'sending')
        GROUP BY e.company_id, e.event_type, e.month
        ORDER BY e.month, min(e.occurred_at)
        LIMIT $1
        """,
        limit,
        company_ids,
    )
    return [Group(r["company_id"], EventType(r["event_type"]), r["month"]) for r in rows]


def batch_timestamp(
    month: date, occurred: list[datetime], stamped_from: datetime | None
) -> datetime:
    """The latest member's time, floored to seconds; in the month a paid subscription started
    (free -> paid), never before that start: Stripe bills a metered price only for usage stamped
    after it started, and the month's earlier events must count (docs/design.md, plan changes)."""
    latest = floor_to_second(max(occurred))
    if stamped_from is not None and month_of(stamped_from) == month:
        return max(latest, floor_to_second(stamped_from))
    return latest


async def claim(
    group: Group, *, event_name: str, now: datetime, lease: timedelta, max_events: int
) -> Batch | None:
    """Step 1 of the sync, one transaction: lock the group's pending events, store the batch
    that will carry them (state `sending`, leased) and mark them taken. None when another
    worker holds the group, a batch of this (company, event type) is in flight (Stripe allows
    one call at a time per customer and meter), or nothing is left."""
    try:
        return await _claim(
            group, event_name=event_name, now=now, lease=lease, max_events=max_events
        )
    except asyncpg.UniqueViolationError:  # a batch of this (company, type) is in flight
        return None


async def _claim(
    group: Group, *, event_name: str, now: datetime, lease: timedelta, max_events: int
) -> Batch | None:
    async with DB.transaction():
        locked = await sql.fetchrow(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0)) AS ok",
            str(group.company_id),
            group.event_type.value,
        )
        if locked is None or not locked["ok"]:
            return None
        company = await sql.fetchrow(
            "SELECT c.stripe_customer_id, c.usage_stamped_from, "
            "EXISTS (SELECT 1 FROM usage_batches b "
            "WHERE b.company_id = c.id AND b.event_type = $2 AND b.state = 'sending') AS in_flight "
            "FROM companies c WHERE c.id = $1",
            group.company_id,
            group.event_type.value,
        )
        if company is None or company["in_flight"] or company["stripe_customer_id"] is None:
            return None
        events = await sql.fetch(
            "SELECT id, quantity, occurred_at FROM usage_events "
            "WHERE company_id = $1 AND event_type = $2 AND month = $3 AND sync_state = 'pending' "
            "ORDER BY occurred_at LIMIT $4 FOR UPDATE SKIP LOCKED",
            group.company_id,
            group.event_type.value,
            group.month,
            max_events,
        )
        if not events:
            return None
        row = await _insert_batch(
            group,
            company["stripe_customer_id"],
            event_name,
            events,
            timestamp=batch_timestamp(
                group.month, [e["occurred_at"] for e in events], company["usage_stamped_from"]
            ),
            now=now,
            lease=lease,
        )
        assert row is not None
        claimed = _batch(row)
    return claimed


async def _insert_batch(
    group: Group,
    customer: str,
    event_name: str,
    events: list[asyncpg.Record],
    *,
    timestamp: datetime,
    now: datetime,
    lease: timedelta,
) -> asyncpg.Record | None:
    """The batch and its events' new state in one statement (first attempt counted). The
    unique index on in-flight batches refuses a second one for the same (company, type)."""
    return await sql.fetchrow(
        f"""
            WITH batch AS (
                INSERT INTO usage_batches (id, company_id, stripe_customer_id, event_type,
                    event_name, month, value, timestamp, state, attempts, lease_until, created_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'sending', 1, $9, $10)
                RETURNING {_COLUMNS}
            ), taken AS (
                UPDATE usage_events SET sync_state = 'sending', batch_id = $1
                WHERE id = ANY($11)
            )
            SELECT * FROM batch
            """,
        uuid.uuid4(),
        group.company_id,
        customer,
        group.event_type.value,
        event_name,
        group.month,
        sum(e["quantity"] for e in events),
        timestamp,
        now + lease,
        now,
        [e["id"] for e in events],
    )


async def due(
    *, now: datetime, limit: int, company_ids: list[uuid.UUID] | None = None
) -> list[Batch]:
    """Batches whose lease passed (a crashed worker, or a retry that is due), oldest month first
    (its invoice closes first). Not leased yet: each is leased by `take` just before its call,
    so a long queue cannot outlive its leases."""
    rows = await sql.fetch(
        f"SELECT {_COLUMNS} FROM usage_batches WHERE state = 'sending' AND lease_until <= $1 "
        f"AND ($3::uuid[] IS NULL OR company_id = ANY($3)) ORDER BY month, lease_until LIMIT $2",
        now,
        limit,
        company_ids,
    )
    return [_batch(r) for r in rows]


async def take(batch: Batch, *, now: datetime, lease: timedelta) -> Batch | None:
    """Lease a due batch for one more attempt; None if another worker took it first. The new
    `attempts` is the holder's fencing token: every later transition names it."""
    row = await sql.fetchrow(
        f"UPDATE usage_batches SET lease_until = $3, attempts = attempts + 1 "
        f"WHERE id = $1 AND state = 'sending' AND attempts = $2 AND lease_until <= $4 "
        f"RETURNING {_COLUMNS}",
        batch.id,
        batch.attempts,
        now + lease,
        now,
    )
    return _batch(row) if row else None


async def _settle(batch: Batch, state: str, event_state: str, **fields: object) -> bool:
    """Move a `sending` batch and its events to their final state: one statement, atomic. Only
    the holder of the current attempt may (a worker whose lease was taken over may not)."""
    sets = "".join(f", {name} = ${i}" for i, name in enumerate(fields, start=5))
    row = await sql.fetchrow(
        f"""
        WITH settled AS (
            UPDATE usage_batches SET state = $2{sets}
            WHERE id = $1 AND state = 'sending' AND attempts = $4 RETURNING id
        ), moved AS (
            UPDATE usage_events SET sync_state = $3
            WHERE batch_id IN (SELECT id FROM settled)
        )
        SELECT count(*) AS n FROM settled
        """,
        batch.id,
        state,
        event_state,
        batch.attempts,
        *fields.values(),
    )
    return row is not None and row["n"] == 1


async def mark_sent(batch: Batch, *, now: datetime) -> bool:
    """Step 3: Stripe has it. The batch and its events are `sent`, atomically."""
    return await _settle(batch, "sent", "sent", sent_at=now, last_error=None)


async def mark_failed(batch: Batch, *, error: str) -> bool:
    """Stripe refused it for good at its first attempt (a 4xx other than a repeat identifier)."""
    return await _settle(batch, "failed", "failed", last_error=error[:1000])


async def mark_unknown(batch: Batch, *, error: str) -> bool:
    """Whether Stripe has it cannot be known any more: only an operator may decide."""
    return await _settle(batch, "unknown", "unknown", last_error=error[:1000])


async def schedule_retry(batch: Batch, *, retry_at: datetime, error: str) -> bool:
    row = await sql.fetchrow(
        "UPDATE usage_batches SET lease_until = $3, last_error = $4 "
        "WHERE id = $1 AND state = 'sending' AND attempts = $2 RETURNING id",
        batch.id,
        batch.attempts,
        retry_at,
        error[:1000],
    )
    return row is not None


async def mark_rejected_later(batch_id: uuid.UUID, *, error: str) -> bool:
    """Stripe accepted the call but its asynchronous validation dropped the event (a meter error
    report names the batch's identifier): nothing of it is billed, so the batch is `failed`
    (also one still being retried: a retry would only hear "already exists"), and an operator
    may re-drive it once the cause is fixed. A worker still holding it settles nothing then:
    every transition requires `sending`."""
    row = await sql.fetchrow(
        """
        WITH failed AS (
            UPDATE usage_batches SET state = 'failed', last_error = $2
            WHERE id = $1 AND state IN ('sending', 'sent', 'unknown') RETURNING id
        ), moved AS (
            UPDATE usage_events SET sync_state = 'failed' WHERE batch_id IN (SELECT id FROM failed)
        )
        SELECT count(*) AS n FROM failed
        """,
        batch_id,
        error[:1000],
    )
    return row is not None and row["n"] == 1


def batch_id_of(identifier: str) -> uuid.UUID | None:
    """The batch a meter event identifier names (`mlb_<hex>`), or None if it is not ours."""
    prefix = "mlb_"
    if not identifier.startswith(prefix):
        return None
    try:
        return uuid.UUID(hex=identifier[len(prefix) :])
    except ValueError:
        return None


async def resolve_unknown(batch_id: uuid.UUID, *, delivered: bool, now: datetime) -> int:
    """An operator's verdict on an `unknown` batch, after comparing with Stripe's meter event
    summaries: delivered -> `sent`; not delivered -> its events are pending again (a new batch).
    Returns the number of events moved."""
    async with DB.transaction():
        row = await sql.fetchrow(
            "SELECT state FROM usage_batches WHERE id = $1 FOR UPDATE", batch_id
        )
        if row is None or row["state"] != "unknown":
            raise NotRedrivable(
                f"batch {batch_id} is {row['state'] if row else 'missing'}: only an unknown "
                "batch can be resolved"
            )
        if delivered:
            await sql.execute(
                "UPDATE usage_batches SET state = 'sent', sent_at = $2 WHERE id = $1", batch_id, now
            )
            result = await sql.execute(
                "UPDATE usage_events SET sync_state = 'sent' WHERE batch_id = $1", batch_id
            )
        else:
            await sql.execute(
                "UPDATE usage_batches SET state = 'failed', redriven_at = $2, "
                "last_error = 'resolved by an operator: not delivered' WHERE id = $1",
                batch_id,
                now,
            )
            result = await sql.execute(
                "UPDATE usage_events SET sync_state = 'pending', batch_id = NULL "
                "WHERE batch_id = $1",
                batch_id,
            )
    return int(result.split()[-1])


class NotRedrivable(Exception):
    pass


async def redrive(batch_id: uuid.UUID, *, now: datetime) -> int:
    """A `failed` batch's events become pending again, to leave as a NEW batch (new identifier).
    Never an `unknown` one: Stripe may have it; look at its meter event summaries first."""
    async with DB.transaction():
        row = await sql.fetchrow(
            "SELECT state, redriven_at FROM usage_batches WHERE id = $1 FOR UPDATE", batch_id
        )
        if row is None:
            raise NotRedrivable(f"no batch {batch_id}")
        if row["state"] != "failed" or row["redriven_at"] is not None:
            raise NotRedrivable(
                f"batch {batch_id} is {row['state']}"
                f"{' and was re-driven already' if row['redriven_at'] else ''}: only a failed "
                "batch can be re-driven"
            )
        await sql.execute("UPDATE usage_batches SET redriven_at = $2 WHERE id = $1", batch_id, now)
        result = await sql.execute(
            "UPDATE usage_events SET sync_state = 'pending', batch_id = NULL WHERE batch_id = $1",
            batch_id,
        )
    return int(result.split()[-1])


async def get(batch_id: uuid.UUID) -> Batch | None:
    row = await sql.fetchrow(f"SELECT {_COLUMNS} FROM usage_batches WHERE id = $1", batch_id)
    return _batch(row) if row else None


def invoice_closes_at(month: date, late_grace_hours: int) -> datetime:
    """When Stripe finalises the invoice of `month`, as far as Meterline knows: the month's end
    plus its grace (`LATE_USAGE_GRACE_HOURS`, set to Stripe's). Usage that reaches Stripe
    later is recorded there and never billed."""
    return month_end(month) + timedelta(hours=late_grace_hours)


@dataclass(frozen=True)
class Unsent:
    """Events of one month and event type in one sync state, not in Stripe yet."""

    month: date
    event_type: EventType
    state: str  # pending, sending, failed, unknown
    events: int
    units: int


def summarize(rows: list[Unsent]) -> list[str]:
    """One line per (month, event type): `2026-11 sms_sent: 10 units in 3 events (failed 1,
    pending 2)`, oldest month first."""
    merged: dict[tuple[date, str], dict[str, tuple[int, int]]] = {}
    for row in rows:
        states = merged.setdefault((row.month, row.event_type.value), {})
        events, units = states.get(row.state, (0, 0))
        states[row.state] = (events + row.events, units + row.units)
    lines = []
    for (month, event_type), states in sorted(merged.items()):
        events = sum(e for e, _ in states.values())
        units = sum(u for _, u in states.values())
        by_state = ", ".join(f"{state} {e}" for state, (e, _) in sorted(states.items()))
        lines.append(f"{month:%Y-%m} {event_type}: {units} units in {events} events ({by_state})")
    return lines


@dataclass(frozen=True)
class SyncStatus:
    batches_by_state: dict[str, int]
    pending_events: int  # events not in Stripe yet (pending, sending, failed, unknown)
    oldest_pending: datetime | None
    unsent_before: list[Unsent]  # of those, the ones of months before `current_month`
    problems: list[Batch]  # unknown and failed (not yet re-driven) batches

    def missed_invoice(self, *, now: datetime, late_grace_hours: int) -> list[Unsent]:
        """Usage of months whose invoice Stripe has finalised without it: Stripe will not bill
        it, whatever happens to it now (the late-usage alert)."""
        return [
            u for u in self.unsent_before if invoice_closes_at(u.month, late_grace_hours) <= now
        ]

    def before_invoice(self, *, now: datetime, late_grace_hours: int) -> list[Unsent]:
        """Last month's usage during the grace: still billed if it reaches Stripe in time."""
        return [u for u in self.unsent_before if invoice_closes_at(u.month, late_grace_hours) > now]


async def status(
    *, current_month: date, problem_limit: int = 50, company_ids: list[uuid.UUID] | None = None
) -> SyncStatus:
    states = await sql.fetch(
        "SELECT state, count(*) AS n FROM usage_batches "
        "WHERE $1::uuid[] IS NULL OR company_id = ANY($1) GROUP BY state",
        company_ids,
    )
    # One pass over the events not in Stripe, by month, event type and state.
    unsent = await sql.fetch(
        "SELECT month, event_type, sync_state, count(*) AS n, sum(quantity) AS units, "
        "min(occurred_at) AS oldest FROM usage_events "
        "WHERE sync_state IN ('pending', 'sending', 'failed', 'unknown') "
        "AND ($1::uuid[] IS NULL OR company_id = ANY($1)) "
        "GROUP BY month, event_type, sync_state",
        company_ids,
    )
    problems = await sql.fetch(
        f"SELECT {_COLUMNS} FROM usage_batches "
        f"WHERE (state = 'unknown' OR (state = 'failed' AND redriven_at IS NULL)) "
        f"AND ($2::uuid[] IS NULL OR company_id = ANY($2)) ORDER BY created_at LIMIT $1",
        problem_limit,
        company_ids,
    )
    return SyncStatus(
        batches_by_state={r["state"]: int(r["n"]) for r in states},
        pending_events=sum(int(r["n"]) for r in unsent),
        oldest_pending=min((r["oldest"] for r in unsent), default=None),
        unsent_before=[
            Unsent(
                month=r["month"],
                event_type=EventType(r["event_type"]),
                state=r["sync_state"],
                events=int(r["n"]),
                units=int(r["units"]),
            )
            for r in unsent
            if r["month"] < current_month
        ],
        problems=[_batch(r) for r in problems],
    )
