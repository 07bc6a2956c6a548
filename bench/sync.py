"""Benchmark of the usage sync (pending events -> Stripe meter events), in-process.

    python -m bench.sync [--events 10000] [--companies 100] [--delay-ms 50] [--concurrency 32]
                         [--repeat 3] [--pool 20] [--budget 120]

It seeds --events pending events spread evenly over --companies starter-tier companies (each
with a Stripe customer) and the five event types, all in the current month, with SQL
(`generate_series`) and the matching usage_rollups rows. Then it times one `SyncJob.run()`
against the Stripe double of the tests (tests/stripe_double.py), which adds --delay-ms to every
call, and prints:

* events synced per second: events delivered (usage_events now `sent`) / wall time of run();
* Stripe calls per 1,000 events: POST /v1/billing/meter_events the double received, and those
  calls against the (company, event type) groups (one call per group at best);
* the job's report, and whether the result is exact: the double's total for every company and
  type equals the rollup, each identifier was accepted once and is a `sent` batch's.

Each measurement starts from empty tables, a fresh double and a fresh seed; it is repeated
--repeat times and the median run (by events/s) is reported. `--concurrency 16,32,64` does
that for each value and names the best.

The job is a library: no Meterline server runs. The database pool (--pool connections) is
opened before timing, as in a server that has been up a while. The Stripe double's HTTP server
runs in threads of this process, so it shares the GIL (and the cores) with the job; PostgreSQL
shares the machine too. The CPU line says who used it (1.00 = one core busy): "job" is this
process's main thread (the event loop), "Stripe double" its other threads.

The database is never the developer's (bench.harness): a fresh database on DATABASE_URL's
server, or an embedded PostgreSQL in a temporary directory, removed at the end.

`python -m bench.suite` runs this benchmark as one of its rows. Run alone, its figures go to
stdout and under "sections.sync" of bench/results/latest.json (the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.harness import (
    PROJECT_ROOT,
    RESULTS_FILE,
    CpuProbe,
    PostgresServer,
    command_line,
    fresh_database,
    machine_info,
    main_thread_source,
    other_threads_source,
    postgres_server,
    postgres_source,
    postmaster_of,
    work_directory,
    write_section,
)
from meterline.billing.catalog import EventType, Tier
from meterline.billing.periods import month_of
from meterline.config import Settings
from meterline.db import engine, sql
from meterline.db.migrate import migrate
from meterline.jobs.sync import SyncJob, SyncReport
from meterline.stripe_gateway.client import make_client
from meterline.stripe_gateway.meter_events import meter_event_name
from tests.stripe_double import StripeDouble

METER_EVENTS_PATH = "/v1/billing/meter_events"
TARGET_EVENTS_PER_S = 5_000
EVENT_TYPES = list(EventType)
TIER = Tier.STARTER
MAX_QUANTITY = 7  # quantities 1..7, so a total counting events instead of quantities shows


@dataclass
class RunResult:
    concurrency: int
    wall_s: float
    events_delivered: int
    events_per_s: float
    stripe_calls: int
    calls_per_1000_events: float
    groups: int
    report: dict[str, int]
    exact: bool
    mismatches: list[str]
    cpu_cores: dict[str, float]  # over run(): job, double, postgres, machine (1.00 = a core)

    @property
    def meets_targets(self) -> bool:
        return self.events_per_s >= TARGET_EVENTS_PER_S and self.stripe_calls <= self.groups


@dataclass
class Series:
    """The runs of one concurrency; the median one (by events/s) stands for them."""

    concurrency: int
    runs: list[RunResult]

    @property
    def median(self) -> RunResult:
        return sorted(self.runs, key=lambda r: r.events_per_s)[(len(self.runs) - 1) // 2]

    @property
    def exact(self) -> bool:
        return all(r.exact for r in self.runs)


# --- seeding ---------------------------------------------------------------------------------


async def reset_tables() -> None:
    """Each measurement starts from empty tables (this database is the benchmark's own)."""
    await sql.execute(
        "TRUNCATE usage_batches, usage_rollups, usage_events, idempotency_keys, companies CASCADE"
    )


async def seed(double: StripeDouble, events: int, companies: int) -> dict[uuid.UUID, str]:
    """Companies with a Stripe customer each, `events` pending events spread evenly over them
    and the event types in the current month, and their rollups. Returns company -> customer."""
    customers = {uuid.uuid4(): double.add_customer() for _ in range(companies)}
    await sql.execute(
        "INSERT INTO companies (id, tier, stripe_customer_id) "
        "SELECT c.id, $3, c.customer FROM unnest($1::uuid[], $2::text[]) AS c(id, customer)",
        list(customers),
        list(customers.values()),
        TIER.value,
    )
    await sql.execute(  # billed by a subscription since always (the plan history)
        "INSERT INTO company_plans (company_id, effective_from, tier, version, billed, reason) "
        "SELECT unnest($1::uuid[]), 'epoch', $2, 1, true, 'subscription'",
        list(customers),
        TIER.value,
    )
    now = datetime.now(UTC).replace(microsecond=0)
    # Event n goes to company n % companies and type (n / companies) % 5; occurred_at is up to
    # an hour ago, never before the first of this month.
    await sql.execute(
        """
        INSERT INTO usage_events (id, company_id, event_type, quantity, occurred_at, month,
                                  sync_state)
        SELECT gen_random_uuid(), s.company_id, s.event_type, s.quantity, s.occurred_at,
               date_trunc('month', s.occurred_at AT TIME ZONE 'UTC')::date, 'pending'
        FROM (SELECT ($1::uuid[])[1 + n % cardinality($1::uuid[])] AS company_id,
                     ($2::text[])[1 + (n / cardinality($1::uuid[])) % cardinality($2::text[])]
                         AS event_type,
                     1 + n % $3 AS quantity,
                     greatest($4::timestamptz - make_interval(secs => n % 3600),
                              $5::timestamptz) AS occurred_at
              FROM generate_series(0, $6 - 1) AS n) AS s
        """,
        list(customers),
        [t.value for t in EVENT_TYPES],
        MAX_QUANTITY,
        now,
        datetime.combine(month_of(now), datetime.min.time(), UTC),
        events,
    )
    await sql.execute(
        """
        INSERT INTO usage_rollups (company_id, month, event_type, used, tier, included,
                                   unit_price, cap)
        SELECT e.company_id, e.month, e.event_type, sum(e.quantity), $1, a.included,
               coalesce(a.unit_price, 0), NULL
        FROM usage_events e
        LEFT JOIN tier_allowances a ON a.tier = $1 AND a.version = 1 AND a.event_type = e.event_type
        GROUP BY e.company_id, e.month, e.event_type, a.included, a.unit_price
        """,
        TIER.value,
    )
    await sql.execute("ANALYZE usage_events, usage_rollups, usage_batches, companies")
    return customers


async def count_groups() -> int:
    row = await sql.fetchrow(
        "SELECT count(*) AS n FROM (SELECT DISTINCT company_id, event_type, month "
        "FROM usage_events WHERE sync_state = 'pending') AS g"
    )
    return int(row["n"]) if row else 0


# --- checks ----------------------------------------------------------------------------------


async def check_exact(double: StripeDouble, customers: dict[uuid.UUID, str]) -> list[str]:
    """What differs between Stripe (the double) and the database; empty when exact."""
    mismatches: list[str] = []
    rollups = await sql.fetch(
        "SELECT company_id, event_type, sum(used) AS used FROM usage_rollups GROUP BY 1, 2"
    )
    expected = {(r["company_id"], r["event_type"]): int(r["used"]) for r in rollups}
    for company_id, customer in customers.items():
        for event_type in EVENT_TYPES:
            want = expected.get((company_id, event_type.value), 0)
            got = double.meter_total(customer, meter_event_name(event_type))
            if got != want:
                mismatches.append(f"{company_id} {event_type.value}: Stripe {got}, rollups {want}")
    accepted = [e["identifier"] for e in double.meter_events()]
    repeated = [i for i, n in Counter(accepted).items() if n > 1]
    repeated += [i for i, n in double.identifiers_seen.items() if n > 1 and i not in repeated]
    mismatches.extend(f"identifier {i} accepted more than once" for i in repeated)
    sent = await sql.fetch("SELECT id FROM usage_batches WHERE state = 'sent'")
    sent_ids = {f"mlb_{r['id'].hex}" for r in sent}
    if set(accepted) != sent_ids:
        mismatches.append(
            f"{len(set(accepted) - sent_ids)} identifiers in Stripe are no sent batch's; "
            f"{len(sent_ids - set(accepted))} sent batches are not in Stripe"
        )
    states = await sql.fetch("SELECT sync_state, count(*) AS n FROM usage_events GROUP BY 1")
    unsent = {r["sync_state"]: int(r["n"]) for r in states if r["sync_state"] != "sent"}
    if unsent:
        mismatches.append(f"events not sent: {unsent}")
    return mismatches


# --- CPU -------------------------------------------------------------------------------------


def cpu_probe(postmaster_pid: int | None) -> CpuProbe:
    """The job (this process's main thread: the event loop), the Stripe double (this process's
    other threads), PostgreSQL (if local) and the whole machine."""
    return CpuProbe(
        {
            "job": main_thread_source,
            "double": other_threads_source,
            "postgres": postgres_source(postmaster_pid),
        }
    )


# --- one measurement -------------------------------------------------------------------------


async def measure(args: argparse.Namespace, concurrency: int, cpu: CpuProbe) -> RunResult:
    """Fresh tables, a fresh double, the seed; then one timed `SyncJob.run()` and the checks."""
    await reset_tables()
    with StripeDouble() as double:
        for event_type in EVENT_TYPES:
            double.add_meter(meter_event_name(event_type))
        customers = await seed(double, args.events, args.companies)
        groups = await count_groups()
        double.delay = args.delay_ms / 1000
        settings = Settings(stripe_secret_key=double.api_key, stripe_api_base=double.url)
        job = SyncJob(
            client=make_client(settings),
            concurrency=concurrency,
            budget=timedelta(seconds=args.budget),
        )
        calls_before = len(double.requests)
        cpu_before = cpu.snapshot()
        started = time.perf_counter()
        report: SyncReport = await job.run()
        wall_s = time.perf_counter() - started
        cpu_cores = CpuProbe.cores(cpu_before, cpu.snapshot())
        calls = sum(
            1 for call in double.requests[calls_before:] if call == ("POST", METER_EVENTS_PATH)
        )
        mismatches = await check_exact(double, customers)
    row = await sql.fetchrow("SELECT count(*) AS n FROM usage_events WHERE sync_state = 'sent'")
    delivered = int(row["n"]) if row else 0
    return RunResult(
        concurrency=concurrency,
        wall_s=round(wall_s, 3),
        events_delivered=delivered,
        events_per_s=round(delivered / wall_s, 1),
        stripe_calls=calls,
        calls_per_1000_events=round(calls * 1000 / args.events, 1),
        groups=groups,
        report=report.as_dict(),
        exact=not mismatches,
        mismatches=mismatches,
        cpu_cores=cpu_cores,
    )


async def run_benchmark(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    engine.configure(database_url)
    await migrate()
    # Every connection opened before timing, as in a server that has been running a while.
    await engine.open_pool(database_url, min_size=args.pool, max_size=args.pool)
    try:
        row = await sql.fetchrow("SELECT current_setting('server_version') AS v, pg_backend_pid()")
        assert row is not None
        version = str(row["v"])
        cpu = cpu_probe(postmaster_of(int(row["pg_backend_pid"])))
        series = []
        for concurrency in args.concurrency:
            runs = []
            for n in range(1, args.repeat + 1):
                print(f"running: concurrency {concurrency}, run {n}/{args.repeat} ... ", end="")
                run = await asyncio.wait_for(measure(args, concurrency, cpu), args.budget + 60)
                print(
                    f"{run.events_per_s:,.0f} events/s, {run.stripe_calls} calls, "
                    f"exact {'yes' if run.exact else 'no'}",
                    flush=True,
                )
                runs.append(run)
            series.append(Series(concurrency, runs))
    finally:
        await engine.close_pool()
    return {"postgres_version": version, "series": series}


# --- report ----------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_series(s: Series, events: int) -> None:
    r = s.median
    rep = r.report
    rates = " / ".join(f"{x.events_per_s:,.0f}" for x in s.runs)
    print(f"concurrency {s.concurrency} (median of {len(s.runs)} runs: {rates} events/s)")
    print(f"  run() wall time        {r.wall_s:.3f} s")
    print(
        f"  events synced/s        {r.events_per_s:,.0f}   "
        f"(target >= {TARGET_EVENTS_PER_S:,}: {mark(r.events_per_s >= TARGET_EVENTS_PER_S)}; "
        f"{r.events_delivered:,} of {events:,} events delivered)"
    )
    print(
        f"  Stripe calls           {r.stripe_calls:,} = {r.calls_per_1000_events:g} per 1,000 "
        f"events, for {r.groups:,} (company, type) groups   "
        f"(target calls <= groups: {mark(r.stripe_calls <= r.groups)})"
    )
    print(
        f"  report                 claimed {rep['claimed']}, sent {rep['sent']}, failed "
        f"{rep['failed']}, retrying {rep['retrying']}, unknown {rep['unknown']}, pending "
        f"{rep['pending']}, duration_ms {rep['duration_ms']}"
    )
    c = r.cpu_cores
    print(
        f"  CPU cores              job {c['job']:.2f}, Stripe double {c['double']:.2f}, "
        f"PostgreSQL {c['postgres']:.2f}, machine {c['machine']:.2f}"
    )
    print(
        f"  exact                  {'yes' if s.exact else 'no'}"
        + (" (every run)" if len(s.runs) > 1 else "")
    )
    mismatches = [m for run in s.runs for m in run.mismatches]
    for line in mismatches[:10]:
        print(f"    {line}")
    if len(mismatches) > 10:
        print(f"    ... and {len(mismatches) - 10} more")


def print_report(report: dict[str, Any], series: list[Series]) -> None:
    m = report["machine"]
    print()
    print(f"command:  {report['command']}")
    print(f"machine:  nproc {m['nproc']}, {m['cpu_model']}, {m['platform']}, Python {m['python']}")
    print(f"          load average before the run: {' '.join(map(str, m['loadavg_before']))}")
    print(
        f"database: {report['database']} (PostgreSQL {report['postgres_version']}), "
        f"pool {report['pool']} connections (opened before timing)"
    )
    print(
        f"load:     {report['events']:,} pending events (quantity 1..{MAX_QUANTITY}) over "
        f"{report['companies']} {TIER.value} companies x {len(EVENT_TYPES)} event types, "
        f"current month; Stripe double in-process, +{report['delay_ms']:g} ms per call"
    )
    print()
    for s in series:
        print_series(s, report["events"])
    if len(series) > 1:
        print()
        header = (
            f"{'concurrency':>11} {'events/s':>9} {'wall s':>7} {'calls':>6} {'groups':>6} "
            f"{'exact':>5}   {'CPU: job':>8} {'double':>6} {'pg':>5} {'machine':>7}"
        )
        print(header)
        print("-" * len(header))
        for s in series:
            r, c = s.median, s.median.cpu_cores
            print(
                f"{s.concurrency:>11} {r.events_per_s:>9,.0f} {r.wall_s:>7.3f} "
                f"{r.stripe_calls:>6} {r.groups:>6} {'yes' if s.exact else 'no':>5}   "
                f"{c['job']:>8.2f} {c['double']:>6.2f} {c['postgres']:>5.2f} {c['machine']:>7.2f}"
            )
        print(f"best concurrency: {report['best_concurrency']} (median events/s)")
    print(
        f'\nfull run: {report["total_s"]:.1f} s; figures under "sections.sync" in '
        f"{RESULTS_FILE.relative_to(PROJECT_ROOT)}"
    )


# --- main ------------------------------------------------------------------------------------


def concurrency_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency must be >= 1")
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sync",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=10_000, help="pending events to sync")
    parser.add_argument("--companies", type=int, default=100, help="companies they belong to")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="added to every Stripe call")
    parser.add_argument(
        "--concurrency",
        type=concurrency_list,
        default=[32],
        help="SyncJob concurrency; a comma-separated list (16,32,64) measures each",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per concurrency; the median is reported"
    )
    parser.add_argument("--budget", type=float, default=120.0, help="SyncJob time budget, s")
    parser.add_argument(
        "--pool", type=int, default=20, help="DB pool size (DB_POOL_MAX_SIZE's default: 20)"
    )
    args = parser.parse_args(argv)
    if min(args.events, args.companies, args.repeat, args.pool) < 1:
        parser.error("--events, --companies, --repeat and --pool must be >= 1")
    if args.delay_ms < 0 or args.budget <= 0:
        parser.error("--delay-ms >= 0 and --budget > 0")
    return args


def run(
    args: argparse.Namespace, argv: list[str], server: PostgresServer
) -> tuple[dict[str, Any], list[Series]]:
    """One benchmark on a fresh database of `server`: the report (latest.json) and the series."""
    began = time.monotonic()
    started_at = datetime.now(UTC)
    machine = machine_info()
    with fresh_database(server) as database_url:
        figures = asyncio.run(run_benchmark(args, database_url))
    series: list[Series] = figures["series"]
    best = max(series, key=lambda s: (s.exact, s.median.meets_targets, s.median.events_per_s))
    report: dict[str, Any] = {
        "benchmark": "sync",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command_line("bench.sync", argv),
        "machine": machine,
        "database": server.description,
        "postgres_version": figures["postgres_version"],
        "pool": args.pool,
        "events": args.events,
        "companies": args.companies,
        "delay_ms": args.delay_ms,
        "repeat": args.repeat,
        "budget_s": args.budget,
        "targets": {"events_per_s": TARGET_EVENTS_PER_S, "calls": "<= groups"},
        "by_concurrency": [
            {
                "concurrency": s.concurrency,
                "exact": s.exact,
                "median": asdict(s.median),
                "events_per_s_runs": [r.events_per_s for r in s.runs],
            }
            for s in series
        ],
        "best_concurrency": best.concurrency,
        "total_s": round(time.monotonic() - began, 1),
    }
    return report, series


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    with work_directory("meterline-bench-sync-") as work_dir, postgres_server(work_dir) as server:
        report, series = run(args, argv, server)
    print_report(report, series)
    write_section("sync", report)
    if not all(s.exact for s in series):
        sys.exit(1)


if __name__ == "__main__":
    main()
