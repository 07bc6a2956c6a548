"""Read rows of the suite: currentUsage and usageLimits latency with a small and a large history.

The usage tables are emptied, then --read-companies companies (starter, professional and
enterprise in turn) get events COPYed in until usage_events holds the first size (10,000 by
default); the latency of each query is measured with 1 client (one request at a time: pure
latency) and with a few (--read-clients); then events are added up to the second size (10
million by default) and the same is measured again. Reads go through the rollups, so their
cost should not depend on the history: the rows show the large/small ratio.

Event n belongs to company n % C, event type (n / C) % 5 and month (n / 5C) % 24 counting back
from the current one (so every company has every type this month at both sizes), on one of
997 instants spread over its month (in the current month: up to now), quantity 1 + n % 7.
Ids are sequential UUIDs (as time-ordered ids would be). The rollups are then computed in SQL
from the events (INSERT ... SELECT ... GROUP BY), so they equal them exactly, and both tables
are VACUUM ANALYZEd.

Seeding fast: COPY (binary, asyncpg `copy_records_to_table`) streamed from a generator; for a
large addition the secondary indexes of usage_events are dropped first and rebuilt from their
own definitions afterwards, and, when the role may, the session skips foreign-key triggers
(`session_replication_role = replica`: the companies and event types exist by construction;
CHECK constraints still apply). The seeding time is printed and kept in latest.json.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from bench.harness import (
    HOST,
    LoadShape,
    Row,
    Target,
    count,
    insert_plans,
    load_problems,
    load_values,
    percentile,
    run_load,
)
from bench.loadgen import LoadOutcome, Request, http_drivers
from meterline.billing.catalog import EventType
from meterline.billing.periods import add_months, month_of

TIERS = ("starter", "professional", "enterprise")
EVENT_TYPES = list(EventType)
MONTHS = 24
INSTANTS = 997  # per month; prime, so instants do not line up with companies or types
QUANTITIES = 7
CHUNK = 500_000  # events per COPY
DROP_INDEXES_FROM = 100_000  # rebuilding the indexes pays off for additions this large
TARGET_P99_MS = 10.0
TARGET_RATIO = 1.2
METER_FIELDS = (
    "eventType used included remaining percentUsed exceeded overageQuantity "
    "unitPrice { amount currency } overageCost { amount currency }"
)
QUERIES = {
    "currentUsage": (
        f"query {{ currentUsage {{ __typename {METER_FIELDS} }} }}",
        b'"__typename":"MeterUsage"',
    ),
    "usageLimits": (
        "query { usageLimits { __typename tier scheduledTier exceeded billingStatus "
        f"graceEndsAt gracePeriodDays meters {{ {METER_FIELDS} }} }} }}",
        b'"__typename":"UsageLimits"',
    ),
}


@dataclass
class Seeder:
    """Grows usage_events of `companies` by the rule in the module's docstring."""

    database_url: str
    companies: list[uuid.UUID]
    now: datetime
    events: int = 0  # seeded so far
    timings: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        current = month_of(self.now)
        self._months = [add_months(current, -k) for k in range(MONTHS)]
        self._instants = []
        for month in self._months:
            start = datetime(month.year, month.month, 1, tzinfo=UTC)
            end = min(datetime.combine(add_months(month, 1), datetime.min.time(), UTC), self.now)
            step = (end - start) / INSTANTS
            self._instants.append([start + step * k for k in range(INSTANTS)])
        self._id_base = uuid.uuid4().int & ~(2**64 - 1)

    def _records(self, first: int, last: int) -> Iterator[tuple[Any, ...]]:
        companies, types = self.companies, [t.value for t in EVENT_TYPES]
        per_month = len(companies) * len(types)
        months, instants, base = self._months, self._instants, self._id_base
        for n in range(first, last):
            m = (n // per_month) % MONTHS
            yield (
                uuid.UUID(int=base | n),
                companies[n % len(companies)],
                types[(n // len(companies)) % len(types)],
                1 + n % QUANTITIES,
                instants[m][n % INSTANTS],
                months[m],
                "local_only",
            )

    async def grow_to(self, total: int) -> dict[str, Any]:
        """Add events until there are `total`; recompute the rollups; VACUUM ANALYZE."""
        connection = await asyncpg.connect(self.database_url, timeout=10, command_timeout=3600)
        try:
            timing = await self._grow(connection, total)
        finally:
            await connection.close()
        self.timings.append(timing)
        return timing

    async def _grow(self, connection: asyncpg.Connection, total: int) -> dict[str, Any]:
        began = time.monotonic()
        start, adding = self.events, total - self.events
        await connection.execute("SET synchronous_commit = off")
        try:
            await connection.execute("SET session_replication_role = replica")
            foreign_keys_checked = False
        except asyncpg.InsufficientPrivilegeError:
            foreign_keys_checked = True
        indexes = []
        if adding >= DROP_INDEXES_FROM:
            indexes = await connection.fetch(
                "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS sql "
                "FROM pg_index WHERE indrelid = 'usage_events'::regclass AND NOT EXISTS "
                "(SELECT 1 FROM pg_constraint WHERE conindid = indexrelid)"
            )
            for index in indexes:
                await connection.execute(f"DROP INDEX {index['name']}")
        columns = ["id", "company_id", "event_type", "quantity", "occurred_at", "month"]
        for first in range(self.events, total, CHUNK):
            last = min(total, first + CHUNK)
            await connection.copy_records_to_table(
                "usage_events",
                records=self._records(first, last),
                columns=[*columns, "sync_state"],
            )
            self.events = last
            if adding >= 10 * CHUNK and (last - start) // CHUNK % 4 == 0:  # every 2 million
                rate = (last - start) / (time.monotonic() - began)
                print(f"  {last:,} events ({rate:,.0f}/s)", flush=True)
        copied = time.monotonic()
        await connection.execute("SET maintenance_work_mem = '1GB'")
        for index in indexes:
            await connection.execute(index["sql"])
        indexed = time.monotonic()
        await self._rollups(connection)
        rolled_up = time.monotonic()
        await connection.execute("VACUUM ANALYZE usage_events")
        await connection.execute("VACUUM ANALYZE usage_rollups")
        done = time.monotonic()
        return {
            "events": total,
            "added": adding,
            "seconds": round(done - began, 1),
            "copy_s": round(copied - began, 1),
            "index_rebuild_s": round(indexed - copied, 1),
            "rollups_s": round(rolled_up - indexed, 1),
            "vacuum_analyze_s": round(done - rolled_up, 1),
            "indexes_rebuilt": [i["name"] for i in indexes],
            "foreign_keys_checked": foreign_keys_checked,
            "table_bytes": await connection.fetchval(
                "SELECT pg_total_relation_size('usage_events')"
            ),
        }

    async def _rollups(self, connection: asyncpg.Connection) -> None:
        """The rollups of the seeded companies, from their events: exactly their sum, priced
        as the server prices a month (the allowance of the company's tier copied in)."""
        async with connection.transaction():
            await connection.execute(
                "DELETE FROM usage_rollups WHERE company_id = ANY($1::uuid[])", self.companies
            )
            await connection.execute(
                """
                INSERT INTO usage_rollups (company_id, month, event_type, used, tier, included,
                                           unit_price, cap)
                SELECT e.company_id, e.month, e.event_type, sum(e.quantity), c.tier, a.included,
                       a.unit_price, CASE WHEN t.hard_cap THEN a.included END
                FROM usage_events e
                JOIN companies c ON c.id = e.company_id
                JOIN tiers t ON t.name = c.tier
                JOIN tier_allowances a
                  ON a.tier = c.tier AND a.version = 1 AND a.event_type = e.event_type
                WHERE e.company_id = ANY($1::uuid[])
                GROUP BY e.company_id, e.month, e.event_type, c.tier, a.included, a.unit_price,
                         t.hard_cap
                """,
                self.companies,
            )


async def prepare(target: Target, companies: int) -> list[uuid.UUID]:
    """Empty usage tables (earlier rows recorded into them) and the read companies."""
    connection = await asyncpg.connect(target.database_url, timeout=10)
    try:
        await connection.execute(
            "TRUNCATE usage_events, idempotency_keys, usage_rollups, usage_batches"
        )
        ids = [uuid.uuid4() for _ in range(companies)]
        await connection.execute(
            "INSERT INTO companies (id, tier) "
            "SELECT id, ($2::text[])[1 + (n - 1) % cardinality($2::text[])] "
            "FROM unnest($1::uuid[]) WITH ORDINALITY AS c(id, n)",
            ids,
            list(TIERS),
        )
        for index, tier in enumerate(TIERS):
            await insert_plans(connection, ids[index :: len(TIERS)], str(tier), billed=False)
        return ids
    finally:
        await connection.close()


async def answers_match(target: Target, company: uuid.UUID, now: datetime) -> str | None:
    """None when currentUsage's `used` equals the company's rollups and events this month."""
    assert target.server is not None
    connection = await asyncpg.connect(target.database_url, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT r.event_type, r.used, (SELECT sum(quantity) FROM usage_events e WHERE "
            "e.company_id = r.company_id AND e.month = r.month AND e.event_type = r.event_type) "
            "AS events FROM usage_rollups r WHERE r.company_id = $1 AND r.month = $2",
            company,
            month_of(now),
        )
    finally:
        await connection.close()
    body = {"query": QUERIES["currentUsage"][0]}
    async with httpx.AsyncClient(base_url=target.server.base_url, timeout=30) as client:
        response = await client.post("/graphql", json=body, headers=target.service_headers(company))
    answered = {m["eventType"]: m["used"] for m in response.json()["data"]["currentUsage"]}
    stored = {EventType(r["event_type"]).name: (r["used"], r["events"]) for r in rows}
    for name, used in answered.items():
        want = stored.get(name, (0, 0))
        if want != (used, used):
            return f"{company} {name}: answered {used}, rollup and events {want}"
    return None


@dataclass
class ReadRun:
    query: str
    events: int
    clients: int
    outcome: LoadOutcome

    @property
    def p50(self) -> float | None:
        return percentile(self.outcome.latencies, 0.5)

    @property
    def p99(self) -> float | None:
        return percentile(self.outcome.latencies, 0.99)


async def measure(
    target: Target, companies: list[uuid.UUID], events: int, clients: list[int], shape: LoadShape
) -> list[ReadRun]:
    assert target.server is not None
    runs = []
    for name, (document, expect) in QUERIES.items():
        body = json.dumps({"query": document})
        requests = [
            Request.post("/graphql", target.service_headers(c), body, (expect,), n)
            for n, c in enumerate(companies)
        ]
        for n in clients:
            print(f"running: {name}, {count(n, 'client')}, {events:,} events ...", flush=True)
            drivers = http_drivers(HOST, target.server.port, requests, n, 1, secrets.token_hex(4))
            outcome = await run_load(drivers, shape.warmup_s, shape.seconds, target.cpu_sources())
            runs.append(ReadRun(name, events, n, outcome))
    return runs


def ratio(large: float | None, small: float | None) -> float | None:
    return round(large / small, 2) if large and small else None


def size_text(events: int) -> str:
    if events >= 1_000_000 and events % 1_000_000 == 0:
        return f"{events // 1_000_000}M"
    if events >= 1_000 and events % 1_000 == 0:
        return f"{events // 1_000}k"
    return f"{events:,}"


async def read_rows(
    target: Target,
    shape: LoadShape,
    companies: int,
    sizes: list[int],
    clients: list[int],
) -> list[Row]:
    """Rows per query, size and number of clients; the 1-client rows carry the targets (p99,
    and the largest size's p50 against the smallest's)."""
    ids = await prepare(target, companies)
    now = datetime.now(UTC)
    seeder = Seeder(target.database_url, ids, now)
    runs: list[ReadRun] = []
    problems: dict[int, list[str]] = {}
    for size in sorted(sizes):
        print(f"seeding usage_events up to {size:,} events ...", flush=True)
        timing = await seeder.grow_to(size)
        print(
            f"seeded {timing['added']:,} events in {timing['seconds']:.1f} s (COPY "
            f"{timing['copy_s']:.1f} s, indexes {timing['index_rebuild_s']:.1f} s, rollups "
            f"{timing['rollups_s']:.1f} s, VACUUM ANALYZE {timing['vacuum_analyze_s']:.1f} s); "
            f"usage_events {timing['table_bytes'] / 2**30:.2f} GiB",
            flush=True,
        )
        mismatch = await answers_match(target, ids[0], now)
        problems[size] = [mismatch] if mismatch else []
        runs += await measure(target, ids, size, clients, shape)
    smallest = min(sizes)
    rows = []
    for run in runs:
        small = next(
            r for r in runs if (r.query, r.clients, r.events) == (run.query, run.clients, smallest)
        )
        p50_ratio, p99_ratio = ratio(run.p50, small.p50), ratio(run.p99, small.p99)
        is_large = run.events != smallest
        targeted = run.clients == 1
        result = (
            f"p50 {run.p50 or 0:.2f} ms, p99 {run.p99 or 0:.2f} ms, {run.outcome.rate:,.0f} req/s"
        )
        target_text = ""
        met = None
        if is_large:
            sizes_text = f"{size_text(run.events)}/{size_text(smallest)}"
            result += f"; {sizes_text} p50 x{p50_ratio}, p99 x{p99_ratio}"
        if targeted:
            target_text = f"p99 <= {TARGET_P99_MS:g} ms" + (
                f", p50 ratio <= {TARGET_RATIO:g}" if is_large else ""
            )
            met = run.p99 is not None and run.p99 <= TARGET_P99_MS
            if is_large:
                met = met and p50_ratio is not None and p50_ratio <= TARGET_RATIO
        rows.append(
            Row(
                key=f"reads.{run.query}.{size_text(run.events)}.c{run.clients}",
                figure=f"{run.query}, {count(run.clients, 'client')}, "
                f"{size_text(run.events)} events",
                result=result,
                target=target_text,
                met=met,
                cpu=run.outcome.cpu_cores,
                values={
                    **load_values(run.outcome),
                    "events_in_database": run.events,
                    "p50_ratio_to_smallest": p50_ratio if is_large else None,
                    "p99_ratio_to_smallest": p99_ratio if is_large else None,
                    "seeding": next(t for t in seeder.timings if t["events"] == run.events),
                },
                problems=load_problems(run.outcome) + problems[run.events],
            )
        )
    return rows
