"""Benchmark of Stripe webhook deliveries against the real server, over HTTP.

    python -m bench.webhooks [--deliveries 2000] [--concurrency 16] [--companies 200]
                             [--duplicates 0.3] [--warmup 100] [--seconds S] [--delay-ms 0]

It starts the Stripe double of the tests (tests/stripe_double.py) in this process, creates
Meterline's catalog in it with `setup-stripe`'s own code, then --companies subscriptions
(starter, professional and enterprise in turn, each naming its company in metadata) and two
months of invoices per subscription: some paid, some with a failed payment, some failed then
paid, some left open. Every step is a snapshot event, as Stripe would send it
(customer.subscription.created/updated, invoice.created/finalized/payment_failed/paid).

It starts `python -m meterline serve` as a separate process (production mode, a database of its
own, STRIPE_API_BASE pointing at the double, a random webhook secret), and POSTs --deliveries
signed deliveries to /webhooks/stripe: the distinct events once each, plus --duplicates of the
deliveries that re-send an earlier event (the same body, signed again), shuffled. C workers
share one keep-alive `httpx.AsyncClient`; each signs a delivery right before sending it (the
signature tolerance is 5 minutes). The first --warmup deliveries (cold connections, the
server's empty price cache) are left out of the figures, not out of the check. With --seconds,
no measured delivery starts after that time.

It prints deliveries/s, latency percentiles (client side, signing excluded), the answers
(200 applied / ignored / duplicate, 500, other), the Stripe reads the double served per delivery
and per applied event (the server re-reads every object), the double's own time per read, the
server's mean time per delivery from its /metrics, and CPU per delivery (load generator,
Stripe double, server, PostgreSQL). Then it checks from the database that every distinct event
delivered is stored once, applied exactly once (applied_count = 1, status applied or ignored),
that each event got exactly one non-duplicate answer, and that the invoice and subscription
mirrors hold what the double holds. Any failure exits non-zero.

The database is never the developer's (bench.harness): a fresh database on DATABASE_URL's
server, or an embedded PostgreSQL in a temporary directory, removed at the end.

The double runs in threads of this process, so it shares the GIL (and the cores) with the load
generator; the server and PostgreSQL share the machine too. The CPU line says who used it
(1.00 = one core busy): "load" is this process's main thread, "double" its other threads.

`python -m bench.suite` runs this benchmark as one of its rows. Run alone, its figures go to
stdout and under "sections.webhooks" of bench/results/latest.json (the rest is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import secrets
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import (
    PROJECT_ROOT,
    REQUEST_TIMEOUT_S,
    RESULTS_FILE,
    CpuProbe,
    PostgresServer,
    ServerProcess,
    command_line,
    fmt,
    fresh_database,
    machine_info,
    main_thread_source,
    meterline_server,
    other_threads_source,
    percentile,
    postgres_server,
    postgres_source,
    postmaster_of,
    processes_source,
    server_env,
    server_pool_size,
    work_directory,
    write_section,
)
from meterline.billing.catalog import EventType, Tier
from meterline.config import Settings
from meterline.db import engine, sql
from meterline.db.tiers import load_plans
from meterline.services.stripe_setup import (
    base_price_lookup_key,
    metered_price_lookup_key,
    setup_stripe,
)
from meterline.stripe_gateway.catalog import StripeCatalog
from meterline.stripe_gateway.client import close_client, make_client
from tests.stripe_double import StripeDouble, sign_payload

SNAPSHOT_ROUTE = "/webhooks/stripe"
TIERS = (Tier.STARTER, Tier.PROFESSIONAL, Tier.ENTERPRISE)
INVOICE_MONTHS = 2  # the two months before this one, per subscription
# How an invoice ends, with weights: paid, open with a failed payment, failed then paid, open.
ENDINGS = {"paid": 55, "failed": 25, "failed_then_paid": 10, "open": 10}
SEED = 20261125
OUTCOMES = ("applied", "ignored", "duplicate", "500", "other", "no response")
# An object id in a path (the double's ids: prefix, "_", 24 letters or digits).
_OBJECT_ID = re.compile(r"/[A-Za-z]+(?:_[A-Za-z]+)*_[A-Za-z0-9]{24}(?=/|$)")


@dataclass(frozen=True)
class Delivery:
    event_id: str
    event_type: str
    object_id: str
    body: bytes
    resend: bool  # a re-delivery of an event sent earlier in the list


@dataclass
class Seeded:
    subscriptions: dict[uuid.UUID, str]  # company -> its subscription in the double
    invoice_companies: dict[str, uuid.UUID]  # invoice -> company
    distinct: list[dict[str, Any]]  # snapshot events, each to be delivered at least once
    invoices: int
    endings: Counter[str]


@dataclass
class LoadResult:
    wall_s: float
    sent: int
    latencies: list[float]  # seconds, sorted; deliveries that got an answer
    outcomes: Counter[str]
    resends_sent: int
    attempted_ids: set[str]  # events sent at least once (answered or not)
    delivered_ids: set[str]  # events with at least one answer
    first_answers: Counter[str]  # event id -> 200 answers that applied or ignored it (not dup)
    first_error: str | None
    stopped_early: bool  # --seconds ended it before every delivery was sent


@dataclass
class Check:
    ok: bool
    events_stored: int
    by_status: dict[str, int]
    problems: list[str] = field(default_factory=list)


# --- the Stripe world ------------------------------------------------------------------------


def previous_months(now: datetime, count: int) -> list[datetime]:
    """The first instants of the `count` UTC months before `now`'s, oldest first."""
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    months = []
    for _ in range(count):
        first = (first - timedelta(days=1)).replace(day=1)
        months.append(first)
    return sorted(months)


async def make_catalog(double: StripeDouble) -> dict[Tier, list[str]]:
    """Meterline's products and prices in the double, made by `setup-stripe`'s code; per paid
    tier the prices of a complete subscription (base price + the five metered prices)."""
    settings = Settings(stripe_secret_key=double.api_key, stripe_api_base=double.url)
    client = make_client(settings, timeout=10.0)
    try:
        result = await setup_stripe(StripeCatalog(client), await load_plans())
    finally:
        await close_client(client)
    prices = {line.key: line.id for line in result.lines if line.kind == "price"}
    return {
        tier: [prices[base_price_lookup_key(tier)]]
        + [prices[metered_price_lookup_key(tier, e)] for e in EventType]
        for tier in TIERS
    }


def seed(
    double: StripeDouble,
    tier_prices: dict[Tier, list[str]],
    companies: int,
    distinct: int,
    rng: random.Random,
) -> Seeded:
    """Subscriptions and invoices in the double, keeping each event Stripe would send on the way
    (a snapshot of that moment); then exactly `distinct` of those events (more
    customer.subscription.updated when there are too few, a random sample when too many)."""
    months = previous_months(datetime.now(UTC), INVOICE_MONTHS)
    start = int(months[0].timestamp())
    subscriptions: dict[uuid.UUID, str] = {}
    invoice_companies: dict[str, uuid.UUID] = {}
    events: list[dict[str, Any]] = []
    endings: Counter[str] = Counter()
    names, weights = list(ENDINGS), list(ENDINGS.values())
    for n in range(companies):
        company_id = uuid.uuid4()
        customer = double.add_customer()
        subscription = double.add_subscription(
            customer,
            tier_prices[TIERS[n % len(TIERS)]],
            metadata={"company_id": str(company_id)},
            start=start,
        )
        subscriptions[company_id] = subscription
        events.append(double.snapshot_event("customer.subscription.created", subscription))
        for month in months:
            invoice = double.invoice_for_month(subscription, int(month.timestamp()), status="draft")
            invoice_companies[invoice] = company_id
            events.append(double.snapshot_event("invoice.created", invoice))
            double.finalize_invoice(invoice)
            events.append(double.snapshot_event("invoice.finalized", invoice))
            ending = rng.choices(names, weights)[0]
            endings[ending] += 1
            if ending in ("failed", "failed_then_paid"):
                double.fail_invoice_payment(invoice)
                events.append(double.snapshot_event("invoice.payment_failed", invoice))
            if ending in ("paid", "failed_then_paid"):
                double.pay_invoice(invoice)
                events.append(double.snapshot_event("invoice.paid", invoice))
        events.append(double.snapshot_event("customer.subscription.updated", subscription))
    others = itertools.cycle(subscriptions.values())
    while len(events) < distinct:
        events.append(double.snapshot_event("customer.subscription.updated", next(others)))
    if len(events) > distinct:
        events = rng.sample(events, distinct)
    return Seeded(subscriptions, invoice_companies, events, len(invoice_companies), endings)


def deliveries_in_order(
    distinct: list[dict[str, Any]], resends: int, rng: random.Random
) -> list[Delivery]:
    """Each distinct event once, and `resends` re-deliveries of events placed earlier in the
    list, shuffled (a re-delivery may still overlap its first delivery in flight)."""
    first = [
        Delivery(e["id"], e["type"], e["data"]["object"]["id"], json.dumps(e).encode(), False)
        for e in distinct
    ]
    rng.shuffle(first)
    is_resend = [True] * resends + [False] * len(first)
    rng.shuffle(is_resend)
    if first and is_resend[0]:  # the first delivery has nothing earlier to repeat
        is_resend[is_resend.index(False)], is_resend[0] = True, False
    order: list[Delivery] = []
    placed: list[Delivery] = []
    fresh = iter(first)
    for resend in is_resend:
        if resend:
            earlier = rng.choice(placed)
            order.append(replace(earlier, resend=True))
        else:
            placed.append(next(fresh))
            order.append(placed[-1])
    return order


class ReadTimer:
    """Wraps the double's `dispatch` (what answers each request, inside its HTTP thread) to
    time it: the double's own part of a re-read, lock and GIL waits included."""

    def __init__(self, double: StripeDouble) -> None:
        self.durations: list[float] = []
        self.active = False
        inner: Callable[..., tuple[int, dict[str, Any]]] = double.dispatch

        def timed(*args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if self.active:
                    self.durations.append(time.perf_counter() - started)

        double.dispatch = timed  # type: ignore[method-assign]


def reads_by_path(requests: list[tuple[str, str]]) -> dict[str, int]:
    counts = Counter(f"{method} {_OBJECT_ID.sub('/{id}', path)}" for method, path in requests)
    return dict(counts.most_common())


# --- CPU -------------------------------------------------------------------------------------


def cpu_probe(server: ServerProcess, postmaster_pid: int | None) -> CpuProbe:
    """The load generator (this process's main thread: the event loop), the Stripe double (this
    process's other threads), the server, PostgreSQL (if local) and the whole machine."""
    return CpuProbe(
        {
            "load": main_thread_source,
            "double": other_threads_source,
            "server": processes_source(server.processes),
            "postgres": postgres_source(postmaster_pid),
        }
    )


# --- the server's own view -------------------------------------------------------------------


async def scrape(client: httpx.AsyncClient, token: str) -> dict[str, float]:
    """From /metrics: the webhook route's request count and summed duration (the server's time,
    from the ASGI middleware), and the webhook outcomes it counted."""
    response = await client.get("/metrics", headers={"authorization": f"Bearer {token}"})
    response.raise_for_status()
    figures: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels, kind = sample.labels, sample.name.rsplit("_", 1)[1]
            ours = labels.get("path") == SNAPSHOT_ROUTE or labels.get("route") == "snapshot"
            if not ours:
                continue
            if family.name == "meterline_request_duration_seconds" and kind in ("sum", "count"):
                figures[f"request_{kind}"] += sample.value
            elif family.name == "meterline_webhook_deliveries" and kind == "total":
                figures[f"outcome_{labels.get('outcome')}"] += sample.value
    return dict(figures)


def difference(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# --- the load --------------------------------------------------------------------------------


async def send_all(
    client: httpx.AsyncClient,
    order: list[Delivery],
    secret: str,
    concurrency: int,
    seconds: float | None,
) -> LoadResult:
    """Every worker sends one delivery at a time, the next in the list, until the list (or
    --seconds) ends."""
    pending = iter(order)
    latencies: list[float] = []
    outcomes: Counter[str] = Counter({name: 0 for name in OUTCOMES})
    attempted: set[str] = set()
    delivered: set[str] = set()
    first_answers: Counter[str] = Counter()
    sent = resends_sent = 0
    first_error: str | None = None
    started = time.perf_counter()
    deadline = started + seconds if seconds else None
    stopped_early = False

    async def worker() -> None:
        nonlocal sent, resends_sent, first_error, stopped_early
        for delivery in pending:
            if deadline is not None and time.perf_counter() >= deadline:
                stopped_early = True
                return
            headers = {
                "content-type": "application/json",
                "stripe-signature": sign_payload(delivery.body, secret),
            }
            sent += 1
            resends_sent += delivery.resend
            attempted.add(delivery.event_id)
            began = time.perf_counter()
            try:
                response = await client.post(SNAPSHOT_ROUTE, content=delivery.body, headers=headers)
            except httpx.HTTPError as exc:
                outcomes["no response"] += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            latencies.append(time.perf_counter() - began)
            delivered.add(delivery.event_id)
            try:
                status = response.json().get("status")
            except (ValueError, AttributeError):
                status = None
            if response.status_code == 200 and status in ("applied", "ignored", "duplicate"):
                outcomes[status] += 1
                if status != "duplicate":
                    first_answers[delivery.event_id] += 1
            else:
                outcomes["500" if response.status_code == 500 else "other"] += 1
                first_error = first_error or f"HTTP {response.status_code}: {response.text[:500]}"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        wall_s=wall_s,
        sent=sent,
        latencies=latencies,
        outcomes=outcomes,
        resends_sent=resends_sent,
        attempted_ids=attempted,
        delivered_ids=delivered,
        first_answers=first_answers,
        first_error=first_error,
        stopped_early=stopped_early,
    )


# --- checks ----------------------------------------------------------------------------------


async def check(double: StripeDouble, seeded: Seeded, loads: list[LoadResult]) -> Check:
    """Each event delivered (warm-up included): stored once, applied once, answered
    non-duplicate once; the mirrors of the objects delivered hold the double's state."""
    problems: list[str] = []
    attempted = set().union(*(x.attempted_ids for x in loads))
    delivered = set().union(*(x.delivered_ids for x in loads))
    first_answers = sum((x.first_answers for x in loads), Counter[str]())
    rows = await sql.fetch("SELECT id, status, applied_count, last_error FROM webhook_events")
    stored = {r["id"]: r for r in rows}
    by_status = Counter(r["status"] for r in rows)
    missing = delivered - stored.keys()
    problems.extend(f"{i}: answered but not stored" for i in sorted(missing))
    never_sent = stored.keys() - attempted
    problems.extend(f"{i}: stored but never sent" for i in sorted(never_sent))
    for event_id, row in sorted(stored.items()):
        if row["applied_count"] != 1:
            problems.append(f"{event_id}: applied_count {row['applied_count']}")
        if row["status"] not in ("applied", "ignored"):
            problems.append(f"{event_id}: status {row['status']} ({row['last_error']})")
    for event_id in sorted(delivered):
        if first_answers[event_id] != 1:
            problems.append(
                f"{event_id}: {first_answers[event_id]} answers that applied it "
                f"(not 'duplicate'), expected 1"
            )

    objects = {e["data"]["object"]["id"] for e in seeded.distinct if e["id"] in stored}
    invoices = await sql.fetch("SELECT id, status, amount_due, amount_paid FROM invoices")
    mirrored = {r["id"]: r for r in invoices}
    for object_id in sorted(o for o in objects if o in seeded.invoice_companies):
        invoice = double.get_object(object_id)
        mirror = mirrored.get(object_id)
        want = (invoice["status"], invoice["amount_due"], invoice["amount_paid"])
        got = (mirror["status"], mirror["amount_due"], mirror["amount_paid"]) if mirror else None
        if got != want:
            problems.append(f"invoice {object_id}: mirror {got}, Stripe {want}")
    companies = await sql.fetch(
        "SELECT id, stripe_subscription_id, subscription_status FROM companies"
    )
    linked = {r["id"]: r for r in companies}
    # A company some event of which was delivered (an invoice's links it too).
    touched = {seeded.invoice_companies[o] for o in objects if o in seeded.invoice_companies}
    touched |= {c for c, sub in seeded.subscriptions.items() if sub in objects}
    for company_id in sorted(touched):
        subscription = seeded.subscriptions[company_id]
        company = linked.get(company_id)
        status = double.get_object(subscription)["status"]
        link = (
            (company["stripe_subscription_id"], company["subscription_status"]) if company else None
        )
        if link != (subscription, status):
            problems.append(f"company {company_id}: {link}, Stripe ({subscription}, {status})")
    return Check(not problems, len(rows), dict(by_status), problems)


# --- the run ---------------------------------------------------------------------------------


async def run_benchmark(
    args: argparse.Namespace,
    double: StripeDouble,
    database_url: str,
    server: ServerProcess,
    secret: str,
    metrics_token: str,
) -> dict[str, Any]:
    rng = random.Random(SEED)
    await engine.open_pool(database_url, min_size=1, max_size=2)
    try:
        row = await sql.fetchrow("SELECT current_setting('server_version') AS v, pg_backend_pid()")
        assert row is not None
        version = str(row["v"])
        cpu = cpu_probe(server, postmaster_of(int(row["pg_backend_pid"])))

        began = time.perf_counter()
        tier_prices = await make_catalog(double)
        resends = round(args.deliveries * args.duplicates)
        seeded = seed(double, tier_prices, args.companies, args.deliveries - resends, rng)
        order = deliveries_in_order(seeded.distinct, resends, rng)
        seed_s = time.perf_counter() - began
        print(
            f"seeded the double in {seed_s:.1f} s: {len(seeded.subscriptions)} subscriptions, "
            f"{seeded.invoices} invoices, {len(seeded.distinct)} distinct events + {resends} "
            f"re-deliveries",
            flush=True,
        )

        limits = httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency
        )
        async with httpx.AsyncClient(
            base_url=server.base_url, limits=limits, timeout=httpx.Timeout(REQUEST_TIMEOUT_S)
        ) as client:
            timer = ReadTimer(double)
            double.delay = args.delay_ms / 1000
            print(f"warm-up: {args.warmup} deliveries ...", flush=True)
            warm = await send_all(client, order[: args.warmup], secret, args.concurrency, None)
            measured = order[args.warmup :]
            metrics_before = await scrape(client, metrics_token)
            requests_before = len(double.requests)
            print(
                f"running: {len(measured)} deliveries, {args.concurrency} workers"
                + (f", at most {args.seconds:g} s" if args.seconds else "")
                + " ...",
                flush=True,
            )
            timer.active = True
            cpu_before = cpu.snapshot()
            load = await send_all(client, measured, secret, args.concurrency, args.seconds)
            cpu_used = CpuProbe.used(cpu_before, cpu.snapshot())
            timer.active = False
            reads = reads_by_path(double.requests[requests_before:])
            server_view = difference(metrics_before, await scrape(client, metrics_token))
        verdict = await check(double, seeded, [warm, load])
    finally:
        await engine.close_pool()

    answered = len(load.latencies)
    applied = load.outcomes["applied"] + load.outcomes["ignored"]
    total_reads = sum(reads.values())
    per_delivery = answered or 1
    read_times = sorted(timer.durations)
    server_count = server_view.get("request_count", 0.0)
    return {
        "postgres_version": version,
        "seed_s": round(seed_s, 2),
        "subscriptions": len(seeded.subscriptions),
        "invoices": seeded.invoices,
        "invoice_endings": dict(seeded.endings),
        "distinct_events": len(seeded.distinct),
        "event_types": dict(Counter(e["type"] for e in seeded.distinct).most_common()),
        "body_bytes_mean": round(sum(len(d.body) for d in order) / len(order)),
        "warmup_sent": warm.sent,
        "warmup_wall_s": round(warm.wall_s, 3),
        "warmup_outcomes": dict(warm.outcomes),
        "sent": load.sent,
        "answered": answered,
        "stopped_early": load.stopped_early,
        "wall_s": round(load.wall_s, 3),
        "deliveries_per_s": round(answered / load.wall_s, 1),
        "p50_ms": percentile(load.latencies, 0.50),
        "p90_ms": percentile(load.latencies, 0.90),
        "p99_ms": percentile(load.latencies, 0.99),
        "max_ms": percentile(load.latencies, 1.0),
        "outcomes": dict(load.outcomes),
        "resends_sent": load.resends_sent,
        "resend_share": round(load.resends_sent / (load.sent or 1), 3),
        "duplicate_answer_share": round(load.outcomes["duplicate"] / per_delivery, 3),
        "first_error": load.first_error or warm.first_error,
        "stripe_reads": reads,
        "stripe_reads_total": total_reads,
        "stripe_reads_per_delivery": round(total_reads / per_delivery, 3),
        "stripe_reads_per_applied_event": round(total_reads / (applied or 1), 3),
        "double_read_ms": {
            "mean": round(sum(read_times) / len(read_times) * 1000, 2) if read_times else None,
            "p50": percentile(read_times, 0.50),
            "p99": percentile(read_times, 0.99),
        },
        "server_mean_ms": (
            round(server_view["request_sum"] / server_count * 1000, 2) if server_count else None
        ),
        "server_outcomes": {
            k.removeprefix("outcome_"): int(v)
            for k, v in server_view.items()
            if k.startswith("outcome_") and v
        },
        "cpu_cores": {k: round(v / load.wall_s, 2) for k, v in cpu_used.items()},
        "cpu_ms_per_delivery": {
            k: round(v * 1000 / per_delivery, 2) for k, v in cpu_used.items() if k != "machine"
        },
        "server_cpu_ms_per_applied_event": round(cpu_used["server"] * 1000 / (applied or 1), 2),
        "check": asdict(verdict),
    }


# --- report ----------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print()
    print(f"command:  {report['command']}")
    print(f"machine:  nproc {m['nproc']}, {m['cpu_model']}, {m['platform']}, Python {m['python']}")
    print(f"          load average before the run: {' '.join(map(str, m['loadavg_before']))}")
    print(f"database: {report['database']} (PostgreSQL {report['postgres_version']})")
    print(
        f"stripe:   the double in this process, +{report['delay_ms']:g} ms per call; "
        f"{report['subscriptions']} subscriptions, {report['invoices']} invoices "
        f"({', '.join(f'{k} {v}' for k, v in report['invoice_endings'].items())})"
    )
    print(
        f"load:     {report['sent']:,} deliveries measured ({report['resends_sent']:,} "
        f"re-deliveries = {report['resend_share']:.0%}) after {report['warmup_sent']} warm-up "
        f"ones, of {report['distinct_events']:,} distinct events; {report['concurrency']} "
        f"workers, one httpx.AsyncClient (keep-alive); bodies {report['body_bytes_mean']:,} "
        f"bytes on average; server pool {report['server_pool']}"
        + (" [stopped by --seconds]" if report["stopped_early"] else "")
    )
    print()
    print(
        f"  deliveries/s           {report['deliveries_per_s']:,.1f}   "
        f"({report['answered']:,} answered in {report['wall_s']:.2f} s)"
    )
    print(
        f"  latency ms             p50 {fmt(report['p50_ms'])}, p90 {fmt(report['p90_ms'])}, "
        f"p99 {fmt(report['p99_ms'])}, max {fmt(report['max_ms'])}   (client side)"
    )
    o, w = report["outcomes"], report["warmup_outcomes"]
    print(
        f"  answers                200 applied {o['applied']:,}, ignored {o['ignored']:,}, "
        f"duplicate {o['duplicate']:,} ({report['duplicate_answer_share']:.0%}); "
        f"500 {o['500']}, other {o['other']}, no response {o['no response']}"
    )
    warm_failures = w["500"] + w["other"] + w["no response"]
    print(
        f"  warm-up                {report['warmup_sent']} deliveries in "
        f"{report['warmup_wall_s']:.2f} s, {warm_failures} without a 200"
    )
    reads = ", ".join(f"{path} {n:,}" for path, n in report["stripe_reads"].items())
    print(
        f"  Stripe reads           {report['stripe_reads_per_delivery']:.2f} per delivery, "
        f"{report['stripe_reads_per_applied_event']:.2f} per applied event   ({reads or 'none'})"
    )
    d = report["double_read_ms"]
    print(
        f"  double's time per read mean {fmt(d['mean'])} ms, p50 {fmt(d['p50'])}, "
        f"p99 {fmt(d['p99'])}   (inside the double, under load)"
    )
    print(
        f"  server time/delivery   {fmt(report['server_mean_ms'])} ms mean   "
        f"(its /metrics: from the ASGI middleware in to the answer out)"
    )
    c, ms = report["cpu_cores"], report["cpu_ms_per_delivery"]
    print(
        f"  CPU ms per delivery    server {ms['server']:.2f}, PostgreSQL {ms['postgres']:.2f}, "
        f"load generator {ms['load']:.2f}, Stripe double {ms['double']:.2f}   "
        f"(server {report['server_cpu_ms_per_applied_event']:.2f} per applied event)"
    )
    print(
        f"  CPU cores              server {c['server']:.2f}, PostgreSQL {c['postgres']:.2f}, "
        f"load {c['load']:.2f}, double {c['double']:.2f}, machine {c['machine']:.2f}"
    )
    if report["first_error"]:
        print(f"\nfirst error: {report['first_error']}")
    chk = report["check"]
    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(chk["by_status"].items()))
    print(
        f"\ncheck: {'OK' if chk['ok'] else 'FAILED'} ({chk['events_stored']:,} events stored: "
        f"{statuses or 'none'})\n  checked: every event delivered stored and applied once, one "
        f"non-duplicate answer each; invoice and subscription mirrors equal to the double"
    )
    for line in chk["problems"][:10]:
        print(f"  {line}")
    if len(chk["problems"]) > 10:
        print(f"  ... and {len(chk['problems']) - 10} more")
    print(
        f"server: ready in {report['server_ready_s']:.1f} s, {report['server_error_log_lines']} "
        f"ERROR lines in its log, exit status {report['server_exit_status']}"
    )
    print(
        f'full run: {report["total_s"]:.1f} s; figures under "sections.webhooks" in '
        f"{RESULTS_FILE.relative_to(PROJECT_ROOT)}"
    )


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhooks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--deliveries", type=int, default=2000, help="deliveries to send")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent workers")
    parser.add_argument("--companies", type=int, default=200, help="subscriptions in Stripe")
    parser.add_argument(
        "--duplicates", type=float, default=0.30, help="share of deliveries that re-send an event"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="stop sending after this long (default: all)"
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every Stripe call")
    parser.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="deliveries sent first and left out of the figures (not out of the check)",
    )
    args = parser.parse_args(argv)
    if min(args.deliveries, args.concurrency, args.companies) < 1:
        parser.error("--deliveries, --concurrency and --companies must be >= 1")
    if not 0 <= args.warmup < args.deliveries:
        parser.error("0 <= --warmup < --deliveries")
    if not 0 <= args.duplicates < 1 or args.delay_ms < 0:
        parser.error("0 <= --duplicates < 1 and --delay-ms >= 0")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds > 0")
    return args


def run(
    args: argparse.Namespace, argv: list[str], postgres: PostgresServer, work_dir: Path
) -> dict[str, Any]:
    """One benchmark: the Stripe double in this process, the server on a fresh database of
    `postgres`; the report (latest.json)."""
    began = time.monotonic()
    started_at = datetime.now(UTC)
    machine = machine_info()
    secret = f"whsec_{secrets.token_urlsafe(24)}"
    metrics_token = secrets.token_urlsafe(24)
    with StripeDouble() as double, fresh_database(postgres) as database_url:
        env = server_env(
            database_url,
            STRIPE_SECRET_KEY=double.api_key,
            STRIPE_API_BASE=double.url,
            STRIPE_WEBHOOK_SECRET=secret,
            METRICS_TOKEN=metrics_token,
        )
        with meterline_server(env, work_dir, name="webhooks server") as server:
            figures = asyncio.run(
                run_benchmark(args, double, database_url, server, secret, metrics_token)
            )
    report: dict[str, Any] = {
        "benchmark": "webhooks",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command_line("bench.webhooks", argv),
        "machine": machine,
        "database": postgres.description,
        "concurrency": args.concurrency,
        "deliveries": args.deliveries,
        "duplicates": args.duplicates,
        "companies": args.companies,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "delay_ms": args.delay_ms,
        "server_pool": server_pool_size(),
        "server_ready_s": round(server.ready_s, 2),
        "server_exit_status": server.exit_status,
        "server_error_log_lines": server.error_log_lines,
        **figures,
        "total_s": round(time.monotonic() - began, 1),
    }
    return report


def ok(report: dict[str, Any]) -> bool:
    return bool(report["check"]["ok"]) and report["answered"] > 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    with work_directory("meterline-bench-webhooks-") as work_dir, postgres_server(work_dir) as pg:
        report = run(args, argv, pg, work_dir)
    print_report(report)
    write_section("webhooks", report)
    if not ok(report):
        sys.exit(1)


if __name__ == "__main__":
    main()
