"""Recording rows of the suite: the raw-asyncpg baseline, recordUsage and recordUsageBatch.

* baseline: recordUsage's transaction on raw asyncpg (bench.baseline), N clients;
* recordUsage over HTTP GraphQL, N keep-alive clients (bench.loadgen), each request with its
  own idempotency key, a service token per company;
* recordUsageBatch, 1,000 events a call (events in variables), 1, 2 and 4 clients, answering
  only the counts, then also the per-event items.

Each scenario runs on companies of its own (enterprise tier: no cap), first spread over
--companies companies, then all on one company (whose rollup row lock serialises commits).
Afterwards, per company, the rollups must equal the sum of the events and what the successful
answers recorded; a row whose check fails says FAILED.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench import baseline
from bench.harness import (
    HOST,
    LoadShape,
    Row,
    Target,
    count,
    insert_companies,
    load_problems,
    load_values,
    measure_recording,
    percentile,
)
from bench.loadgen import KEY_PLACEHOLDER, LoadOutcome, Request, http_drivers

TIER = "enterprise"
EVENT_TYPE = baseline.EVENT_TYPE
QUANTITY = baseline.QUANTITY
TARGET_SHARE_OF_BASELINE = 0.5
TARGET_P99_MS = 50.0
TARGET_BATCH_EVENTS_PER_S = 20_000

RECORD_MUTATION = (
    "mutation($input: RecordUsageInput!) { recordUsage(input: $input) "
    "{ __typename ... on UsageRecorded { duplicate usage { used } } } }"
)
BATCH_COUNTS = "recorded duplicates"
BATCH_ITEMS = "recorded duplicates items { index duplicate }"


def batch_mutation(selection: str) -> str:
    return (
        "mutation($events: [RecordUsageInput!]!) { recordUsageBatch(events: $events) "
        f"{{ __typename ... on UsageBatchRecorded {{ {selection} }} }} }}"
    )


def event_input(key: str) -> dict[str, Any]:
    return {"eventType": EVENT_TYPE.name, "quantity": QUANTITY, "idempotencyKey": key}


def record_requests(target: Target, companies: list[uuid.UUID]) -> list[Request]:
    body = json.dumps(
        {"query": RECORD_MUTATION, "variables": {"input": event_input(KEY_PLACEHOLDER)}}
    )
    expect = (b'"__typename":"UsageRecorded"', b'"duplicate":false')
    return [
        Request.post("/graphql", target.service_headers(c), body, expect, n)
        for n, c in enumerate(companies)
    ]


def batch_requests(
    target: Target, companies: list[uuid.UUID], size: int, selection: str
) -> list[Request]:
    events = [event_input(KEY_PLACEHOLDER) for _ in range(size)]
    body = json.dumps({"query": batch_mutation(selection), "variables": {"events": events}})
    expect = (
        b'"__typename":"UsageBatchRecorded"',
        b'"recorded":%d' % size,
        b'"duplicates":0',
    )
    return [
        Request.post("/graphql", target.service_headers(c), body, expect, n)
        for n, c in enumerate(companies)
    ]


async def new_companies(target: Target, count: int) -> list[uuid.UUID]:
    connection = await asyncpg.connect(target.database_url, timeout=10)
    try:
        return await insert_companies(connection, count, TIER)
    finally:
        await connection.close()


def scenarios(companies: int) -> list[tuple[str, str, int]]:
    """(key, description, companies) of the two spreads every recording row is measured at."""
    return [("spread", f"over {companies:,} companies", companies), ("one", "on one company", 1)]


def rate_text(outcome: LoadOutcome, unit: str) -> str:
    return (
        f"{outcome.rate:,.0f} {unit}, p50 {percentile(outcome.latencies, 0.5) or 0:.1f} ms, "
        f"p99 {percentile(outcome.latencies, 0.99) or 0:.1f} ms"
    )


def consistency_values(outcome: LoadOutcome, consistency: Any) -> dict[str, Any]:
    return {
        **load_values(outcome),
        "rollups_consistent": consistency.consistent,
        "events_checked": consistency.events,
    }


# --- baseline --------------------------------------------------------------------------------


async def baseline_rows(target: Target, shape: LoadShape, companies: int) -> list[Row]:
    rows = []
    for key, spread, how_many in scenarios(companies):
        ids = await new_companies(target, how_many)
        print(f"running: baseline, {shape.connections} clients {spread} ...", flush=True)
        drivers = baseline.drivers(target.database_url, ids, shape.connections, shape.processes)
        outcome, consistency = await measure_recording(target, drivers, ids, QUANTITY, shape)
        rows.append(
            Row(
                key=f"baseline.{key}",
                figure=f"baseline: raw asyncpg transaction, {shape.connections} clients {spread}",
                result=rate_text(outcome, "events/s"),
                cpu=outcome.cpu_cores,
                values={**consistency_values(outcome, consistency), **baseline.describe()},
                problems=load_problems(outcome, consistency),
            )
        )
    return rows


# --- recordUsage -----------------------------------------------------------------------------


async def record_usage_rows(
    target: Target,
    shape: LoadShape,
    companies: int,
    baseline_rates: dict[str, float],
    workers: int = 1,
) -> list[Row]:
    """`baseline_rates`: events/s of the baseline by scenario key ("spread", "one")."""
    assert target.server is not None
    rows = []
    for key, spread, how_many in scenarios(companies):
        ids = await new_companies(target, how_many)
        print(
            f"running: recordUsage, {shape.connections} clients {spread}, "
            f"{count(workers, 'worker')} ...",
            flush=True,
        )
        drivers = http_drivers(
            HOST,
            target.server.port,
            record_requests(target, ids),
            shape.connections,
            shape.processes,
            secrets.token_hex(4),
        )
        outcome, consistency = await measure_recording(target, drivers, ids, QUANTITY, shape)
        base = baseline_rates.get(key)
        share = outcome.rate / base if base else None
        p99 = percentile(outcome.latencies, 0.99)
        result = rate_text(outcome, "req/s")
        if share is not None:
            result += f"; {share:.1%} of baseline"
        rows.append(
            Row(
                key=f"record_usage.{key}" + (f".workers{workers}" if workers > 1 else ""),
                figure=f"recordUsage over HTTP, {shape.connections} clients {spread}"
                + (f", serve --workers {workers}" if workers > 1 else ""),
                result=result,
                target=f">= {TARGET_SHARE_OF_BASELINE:.0%} of baseline, p99 <= "
                f"{TARGET_P99_MS:g} ms",
                met=(
                    None
                    if share is None or p99 is None
                    else share >= TARGET_SHARE_OF_BASELINE and p99 <= TARGET_P99_MS
                ),
                cpu=outcome.cpu_cores,
                values={
                    **consistency_values(outcome, consistency),
                    "share_of_baseline": round(share, 4) if share is not None else None,
                    "workers": workers,
                },
                problems=load_problems(outcome, consistency),
            )
        )
    return rows


# --- recordUsageBatch ------------------------------------------------------------------------


async def batch_available(target: Target) -> str | None:
    """None when the server has recordUsageBatch; else why not (one probe call, on a company
    of its own, with one event)."""
    import httpx

    assert target.server is not None
    [probe] = await new_companies(target, 1)
    body = {"query": batch_mutation(BATCH_COUNTS), "variables": {"events": [event_input("p")]}}
    headers = target.service_headers(probe)
    async with httpx.AsyncClient(base_url=target.server.base_url, timeout=30) as client:
        response = await client.post("/graphql", json=body, headers=headers)
    if response.status_code == 200 and '"UsageBatchRecorded"' in response.text:
        return None
    return f"HTTP {response.status_code}: {response.text[:300]}"


@dataclass
class BatchRun:
    clients: int
    items: bool
    outcome: LoadOutcome
    consistent: bool
    problems: list[str]
    size: int

    @property
    def events_per_s(self) -> float:
        return self.outcome.rate * self.size

    @property
    def server_cpu_ms_per_1000_events(self) -> float | None:
        server = self.outcome.cpu_cores.get("server")
        if server is None or not self.events_per_s:
            return None
        return round(server * 1000 / self.events_per_s * 1000, 2)


async def batch_rows(
    target: Target, shape: LoadShape, companies: int, size: int, clients: list[int]
) -> list[Row]:
    """One row per selection (counts only, with items): the best over `clients`, all kept."""
    assert target.server is not None
    missing = await batch_available(target)
    if missing is not None:
        print(f"recordUsageBatch is not available: {missing}", flush=True)
        return [
            Row(
                key="record_usage_batch",
                figure=f"recordUsageBatch, {size:,} events a call",
                result="not available on this server",
                target=f">= {TARGET_BATCH_EVENTS_PER_S:,} events/s",
                values={"available": False, "answer": missing},
            )
        ]
    runs: list[BatchRun] = []
    for selection in (BATCH_COUNTS, BATCH_ITEMS):
        for n in clients:
            ids = await new_companies(target, companies)
            items = selection == BATCH_ITEMS
            print(
                f"running: recordUsageBatch x {size}, {count(n, 'client')}"
                + (", with items" if items else "")
                + " ...",
                flush=True,
            )
            drivers = http_drivers(
                HOST,
                target.server.port,
                batch_requests(target, ids, size, selection),
                n,
                1,
                secrets.token_hex(4),
                timeout_s=120.0,
            )
            run_shape = LoadShape(n, shape.warmup_s, shape.seconds)
            outcome, consistency = await measure_recording(
                target, drivers, ids, QUANTITY * size, run_shape
            )
            runs.append(
                BatchRun(
                    n,
                    items,
                    outcome,
                    consistency.consistent,
                    load_problems(outcome, consistency),
                    size,
                )
            )
    rows = []
    for items in (False, True):
        mine = [r for r in runs if r.items == items]
        best = max(mine, key=lambda r: r.events_per_s)
        every = ", ".join(f"{r.clients}: {r.events_per_s:,.0f}" for r in mine)
        rows.append(
            Row(
                key="record_usage_batch" + (".items" if items else ""),
                figure=f"recordUsageBatch, {size:,} events a call"
                + (", answering items { index duplicate }" if items else ", counts only")
                + f", best of {'/'.join(str(r.clients) for r in mine)} clients",
                result=f"{best.events_per_s:,.0f} events/s with {count(best.clients, 'client')}, "
                f"p50 {percentile(best.outcome.latencies, 0.5) or 0:.0f} ms, "
                f"p99 {percentile(best.outcome.latencies, 0.99) or 0:.0f} ms "
                f"(clients: events/s = {every})",
                target="" if items else f">= {TARGET_BATCH_EVENTS_PER_S:,} events/s",
                met=None if items else best.events_per_s >= TARGET_BATCH_EVENTS_PER_S,
                cpu=best.outcome.cpu_cores,
                values={
                    "available": True,
                    "best_clients": best.clients,
                    "events_per_s": round(best.events_per_s, 1),
                    "server_cpu_ms_per_1000_events": best.server_cpu_ms_per_1000_events,
                    "runs": [
                        {
                            "clients": r.clients,
                            "events_per_s": round(r.events_per_s, 1),
                            "calls": load_values(r.outcome),
                            "rollups_consistent": r.consistent,
                        }
                        for r in mine
                    ],
                },
                problems=[p for r in mine for p in r.problems],
            )
        )
    return rows


if __name__ == "__main__":
    # The command this module used to be; the suite's options are a superset of its old ones.
    import sys

    from bench.suite import main

    main(["--only", "baseline,record_usage", *sys.argv[1:]])
