"""The baseline, "the physical limit here": recordUsage's transaction on raw asyncpg.

Each client owns one connection and runs, one after the other, the transaction a recordUsage
with an idempotency key runs: meterline.db.usage.RECORD_EVENT_SQL (the server's own statement:
rollup upsert, event insert and key claim in one statement, so one round trip and no
BEGIN/COMMIT), with the parameters the server passes. No HTTP, no GraphQL, no token, no
company lookup: what is left is PostgreSQL plus the cheapest client there is, on the same
machine, with the same concurrency and the same companies' spread as the HTTP rows.

The clients run in their own process (bench.loadgen), so "load" in the CPU columns is the
client's asyncpg work; "postgres" its backends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from bench.loadgen import PartResult, Tally, Window, per_connection, split
from meterline.billing.catalog import EventType, Tier
from meterline.billing.periods import month_of
from meterline.db.usage import RECORD_EVENT_SQL

EVENT_TYPE = EventType.GUEST_INVITATION  # the companies are enterprise: no cap
QUANTITY = 3  # not 1, so a rollup counting requests instead of quantities shows
SYNC_STATE = "local_only"  # what the server writes for a manual account (no subscription)
# What the server decides from the company's plan history before the statement (enterprise,
# version 1, unlimited; a history written once, so plan_seq 0): passed as it would pass it.
PLAN_SEQ = 0
PRICING = (Tier.ENTERPRISE.value, 1, None, Decimal("0.10"), None)
# What the server stores for a key's payload (sha256 of the canonical event type, quantity and
# metadata): computed once here, since its cost is the server's, not the database's.
FINGERPRINT = hashlib.sha256(
    json.dumps([EVENT_TYPE.value, QUANTITY, None], separators=(",", ":")).encode()
).hexdigest()


class _Refused(Exception):
    pass


@dataclass
class BaselineDriver:
    database_url: str
    companies: list[list[tuple[int, uuid.UUID]]]  # per connection: (label, company)
    key_tag: str
    first_connection: int = 0
    timeout_s: float = 30.0
    _connections: list[asyncpg.Connection] = field(default_factory=list, repr=False)

    async def prepare(self) -> None:
        self._connections = list(
            await asyncio.gather(
                *(asyncpg.connect(self.database_url, timeout=30) for _ in self.companies)
            )
        )

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connections), return_exceptions=True)

    async def run(self, window: Window) -> PartResult:
        tally = Tally(window)
        await asyncio.sleep(max(0.0, window.start - time.monotonic()))
        await asyncio.gather(*(self._client(n, window, tally) for n in range(len(self.companies))))
        return tally.result()

    async def _client(self, index: int, window: Window, tally: Tally) -> None:
        connection = self._connections[index]
        targets = self.companies[index]
        prefix = f"{self.key_tag}-{self.first_connection + index:05d}-"
        counter = 0
        while time.monotonic() < window.end:
            label, company = targets[counter % len(targets)]
            counter += 1
            key = f"{prefix}{counter:010d}"
            now = datetime.now(UTC)
            month = month_of(now)
            sent = time.monotonic()
            try:
                recorded = await connection.fetchrow(
                    RECORD_EVENT_SQL,
                    company,
                    month,
                    EVENT_TYPE.value,
                    QUANTITY,
                    uuid.uuid4(),
                    now,
                    key,
                    None,
                    SYNC_STATE,
                    FINGERPRINT,
                    None,
                    PLAN_SEQ,
                    *PRICING,
                    timeout=self.timeout_s,
                )
                if recorded is None or recorded["id"] is None:
                    raise _Refused("cap reached, or the plan changed")
            except (_Refused, asyncpg.PostgresError, TimeoutError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                continue
            tally.success(label, sent, time.monotonic())


def drivers(
    database_url: str, companies: list[uuid.UUID], concurrency: int, processes: int
) -> list[BaselineDriver]:
    """`concurrency` clients over `processes` processes, the companies dealt out to them; a
    success is counted under the company's index in `companies`."""
    tag = secrets.token_hex(4)
    clients = per_connection(list(enumerate(companies)), concurrency)
    return [
        BaselineDriver(database_url, chunk, tag, first)
        for first, chunk in split(clients, processes)
    ]


def describe() -> dict[str, Any]:
    return {
        "statement": "meterline.db.usage.RECORD_EVENT_SQL",
        "event_type": EVENT_TYPE.value,
        "quantity": QUANTITY,
    }
