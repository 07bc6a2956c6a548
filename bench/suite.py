"""Meterline's performance suite: every figure of the README's Performance section, one run.

    python -m bench.suite [--quick] [--seconds 10] [--skip ROWS] [--only ROWS] [...]
    (`make bench` runs it with the defaults; `--help` lists every option)

Rows, in the order they run (names for --skip/--only):

  tokens        TokenVerifier.verify in-process, HS256 service and RS256 Clerk tokens (bench.tokens)
  baseline      recordUsage's transaction on raw asyncpg, the physical limit here (bench.baseline)
  record_usage  recordUsage over HTTP GraphQL, 32 clients over 1,000 companies, then on one
  workers       the same with `meterline serve --workers 2`, when this checkout has the flag
  batch         recordUsageBatch, 1,000 events a call, 1/2/4 clients, counts then items
  reads         currentUsage and usageLimits latency with 10 thousand, then 10 million events
  sync          the usage sync against the Stripe double (bench.sync)
  webhooks      signed Stripe deliveries against the server (bench.webhooks)

Every row is measured in this one run, on this machine, so that ratios hold when it is noisy.
The server is `python -m meterline serve` in its own process (production mode) on a database
migrated by `meterline migrate`; the load comes from separate processes (bench.loadgen, a
minimal keep-alive HTTP/1.1 client). CPU columns are cores used over each measured window
(1.00 = one core busy): load generator, server (all its workers), PostgreSQL (its backends,
when local) and the whole machine.

With DATABASE_URL set every database is a fresh one on that server, dropped at the end;
without it an embedded PostgreSQL runs in a temporary directory, removed at the end. The table
goes to stdout; every row, the machine and the command to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import record_usage, sync, webhooks
from bench.harness import (
    PROJECT_ROOT,
    RESULTS_FILE,
    LoadShape,
    PostgresServer,
    Row,
    ServerProcess,
    Target,
    command_line,
    fresh_database,
    local_postmaster,
    machine_info,
    meterline_server,
    migrate,
    new_secret,
    postgres_server,
    read_results,
    serve_supports_workers,
    server_env,
    server_pool_size,
    work_directory,
    write_results,
)
from bench.reads import read_rows
from bench.tokens import token_rows

GROUPS = ("tokens", "baseline", "record_usage", "workers", "batch", "reads", "sync", "webhooks")
SERVER_GROUPS = ("baseline", "record_usage", "workers", "batch", "reads")
# Defaults of the full run and of --quick (about 2 minutes); an option given wins over both.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "seconds": 10.0,
        "warmup": 2.0,
        "batch_seconds": 8.0,
        "batch_clients": [1, 2, 4],
        "read_seconds": 5.0,
        "read_sizes": [10_000, 10_000_000],
        "read_clients": [1, 8],
        "token_calls": 5_000,
        "sync_events": 10_000,
        "sync_repeat": 3,
        "webhook_deliveries": 2_000,
    },
    "quick": {
        "seconds": 3.0,
        "warmup": 1.0,
        "batch_seconds": 3.0,
        "batch_clients": [1, 4],
        "read_seconds": 2.0,
        "read_sizes": [10_000, 1_000_000],
        "read_clients": [1, 8],
        "token_calls": 1_000,
        "sync_events": 10_000,  # fewer events would still need one call per group: slower/s
        "sync_repeat": 1,
        "webhook_deliveries": 600,
    },
}


def int_list(text: str) -> list[int]:
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("values must be >= 1")
    return values


def group_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(names) - set(GROUPS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown rows {sorted(unknown)}; rows: {GROUPS}")
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="short windows and smaller sizes (about 2 minutes)")
    add("--only", type=group_list, default=None, help="run only these rows (comma-separated)")
    add("--skip", type=group_list, default=[], help="skip these rows (comma-separated)")
    add("--seconds", type=float, help="measured seconds per load run (full 10, quick 3)")
    add("--warmup", type=float, help="warm-up seconds before each measured window (2, 1)")
    add("--concurrency", type=int, default=32, help="clients of the recording rows")
    add("--companies", type=int, default=1000, help="companies of the spread scenarios")
    add("--load-processes", type=int, default=1, help="load generator processes (clients split)")
    add("--workers", type=int, default=2, help="`serve --workers N` of the workers row")
    add("--batch-size", type=int, default=1000, help="events per recordUsageBatch call")
    add("--batch-clients", type=int_list, help="recordUsageBatch clients to try (1,2,4; 1,4)")
    add("--batch-seconds", type=float, help="measured seconds per batch run (8, 3)")
    add("--read-sizes", type=int_list, help="events in the database (10000,10000000; ...,1000000)")
    add("--read-clients", type=int_list, help="read clients (1,8)")
    add("--read-seconds", type=float, help="measured seconds per read run (5, 2)")
    add("--read-companies", type=int, default=1000, help="companies the seeded events belong to")
    add("--token-calls", type=int, help="verifications timed per algorithm (5000, 1000)")
    add("--sync-events", type=int, help="pending events of the sync row (10000)")
    add("--sync-repeat", type=int, help="sync runs, the median reported (3, 1)")
    add("--webhook-deliveries", type=int, help="deliveries of the webhooks row (2000, 600)")
    args = parser.parse_args(argv)
    for name, default in PROFILES["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if min(args.seconds, args.batch_seconds, args.read_seconds) <= 0 or args.warmup < 0:
        parser.error("durations must be > 0 (--warmup >= 0)")
    if min(args.concurrency, args.companies, args.load_processes, args.batch_size) < 1:
        parser.error("--concurrency, --companies, --load-processes, --batch-size must be >= 1")
    if args.concurrency > 60:
        parser.error("--concurrency above 60 would crowd a 100-connection PostgreSQL")
    args.groups = [g for g in (args.only or GROUPS) if g not in args.skip]
    return args


# --- running the rows ------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.rows: list[Row] = []
        self.sections: dict[str, Any] = {}
        self.servers: list[dict[str, Any]] = []
        self.postgres_version: str | None = None

    def attempt(self, group: str, work: Callable[[], list[Row]]) -> None:
        """A row group that fails is reported as a FAILED row; the others still run."""
        began = time.monotonic()
        try:
            rows = work()
        except Exception as exc:  # anything but Ctrl-C: report it and go on
            traceback.print_exc()
            rows = [
                Row(
                    key=f"{group}.error",
                    figure=f"{group} rows",
                    result="error",
                    problems=[f"{type(exc).__name__}: {exc}"],
                )
            ]
        for row in rows:
            row.values.setdefault("group_seconds", round(time.monotonic() - began, 1))
        self.rows += rows

    @contextmanager
    def server(self, target: Target, workers: int = 1) -> Iterator[Target]:
        env = server_env(target.database_url, SERVICE_JWT_SECRET=target.service_secret)
        name = f"server ({workers} worker{'s' if workers > 1 else ''})"
        with meterline_server(env, self.work_dir, workers, name) as server:
            yield replace(target, server=server)
        self.servers.append(server_summary(name, server))

    def run(self, postgres: PostgresServer) -> None:
        args, groups = self.args, self.args.groups
        if "tokens" in groups:
            print("running: token verification ...", flush=True)
            self.attempt("tokens", lambda: token_rows(args.token_calls))
        if any(g in groups for g in SERVER_GROUPS):
            with fresh_database(postgres) as database_url:
                self.run_server_rows(database_url)
        if "sync" in groups:
            self.attempt("sync", lambda: self.sync_rows(postgres))
        if "webhooks" in groups:
            self.attempt("webhooks", lambda: self.webhook_rows(postgres))

    def run_server_rows(self, database_url: str) -> None:
        args, groups = self.args, self.args.groups
        print("migrating the benchmark database (meterline migrate) ...", flush=True)
        migrate(database_url)
        postmaster, self.postgres_version = asyncio.run(database_facts(database_url))
        target = Target(database_url, postmaster, service_secret=new_secret())
        shape = LoadShape(args.concurrency, args.warmup, args.seconds, args.load_processes)
        if "baseline" in groups:
            self.attempt(
                "baseline",
                lambda: asyncio.run(record_usage.baseline_rows(target, shape, args.companies)),
            )
        rates = {
            row.key.removeprefix("baseline."): row.values["per_s"]
            for row in self.rows
            if row.key.startswith("baseline.") and not row.problems
        }

        def recording(workers: int) -> Callable[[], list[Row]]:
            def work() -> list[Row]:
                with self.server(target, workers) as served:
                    return asyncio.run(
                        record_usage.record_usage_rows(
                            served, shape, args.companies, rates, workers
                        )
                    )

            return work

        if "record_usage" in groups:
            self.attempt("record_usage", recording(1))
        if "workers" in groups and args.workers > 1:
            if serve_supports_workers():
                self.attempt("workers", recording(args.workers))
            else:
                self.rows.append(
                    Row(
                        key=f"record_usage.workers{args.workers}",
                        figure=f"recordUsage over HTTP, serve --workers {args.workers}",
                        result="not measured: `meterline serve` has no --workers option here",
                    )
                )
        if "batch" in groups or "reads" in groups:
            self.attempt("batch+reads", lambda: self.batch_and_read_rows(target, shape))

    def batch_and_read_rows(self, target: Target, shape: LoadShape) -> list[Row]:
        args, rows = self.args, []
        with self.server(target) as served:
            if "batch" in args.groups:
                batch_shape = replace(shape, seconds=args.batch_seconds)
                rows += asyncio.run(
                    record_usage.batch_rows(
                        served, batch_shape, args.companies, args.batch_size, args.batch_clients
                    )
                )
            if "reads" in args.groups:
                read_shape = LoadShape(1, min(args.warmup, 1.0), args.read_seconds)
                rows += asyncio.run(
                    read_rows(
                        served, read_shape, args.read_companies, args.read_sizes, args.read_clients
                    )
                )
        return rows

    def sync_rows(self, postgres: PostgresServer) -> list[Row]:
        argv = ["--events", str(self.args.sync_events), "--repeat", str(self.args.sync_repeat)]
        print(f"running: sync ({shlex.join(argv)}) ...", flush=True)
        report, _ = sync.run(sync.parse_args(argv), argv, postgres)
        self.sections["sync"] = report
        best = next(
            s for s in report["by_concurrency"] if s["concurrency"] == report["best_concurrency"]
        )
        median = best["median"]
        runs = " / ".join(f"{r:,.0f}" for r in best["events_per_s_runs"])
        return [
            Row(
                key="sync",
                figure=f"usage sync to the Stripe double (+{report['delay_ms']:g} ms a call), "
                f"{report['events']:,} events, concurrency {best['concurrency']}",
                result=f"{median['events_per_s']:,.0f} events/s (median of runs {runs}); "
                f"{median['stripe_calls']} Stripe calls for {median['groups']} groups",
                target=f">= {sync.TARGET_EVENTS_PER_S:,} events/s, calls <= groups",
                met=median["events_per_s"] >= sync.TARGET_EVENTS_PER_S
                and median["stripe_calls"] <= median["groups"],
                cpu=median["cpu_cores"],
                values={"events_per_s": median["events_per_s"], "exact": best["exact"]},
                problems=[] if best["exact"] else median["mismatches"][:5] or ["not exact"],
            )
        ]

    def webhook_rows(self, postgres: PostgresServer) -> list[Row]:
        argv = ["--deliveries", str(self.args.webhook_deliveries)]
        print(f"running: webhooks ({shlex.join(argv)}) ...", flush=True)
        report = webhooks.run(webhooks.parse_args(argv), argv, postgres, self.work_dir)
        self.sections["webhooks"] = report
        self.servers.append(
            {
                "name": "webhooks server",
                "workers": 1,
                "ready_s": report["server_ready_s"],
                "exit_status": report["server_exit_status"],
                "error_log_lines": report["server_error_log_lines"],
            }
        )
        return [
            Row(
                key="webhooks",
                figure=f"Stripe webhook deliveries, {report['concurrency']} clients, "
                f"{report['sent']:,} measured ({report['resend_share']:.0%} re-deliveries)",
                result=f"{report['deliveries_per_s']:,.0f} deliveries/s, p50 "
                f"{report['p50_ms'] or 0:.0f} ms, p99 {report['p99_ms'] or 0:.0f} ms; server "
                f"{report['cpu_ms_per_delivery']['server']:.1f} ms CPU a delivery",
                cpu=report["cpu_cores"],
                values={k: report[k] for k in ("deliveries_per_s", "p50_ms", "p99_ms", "answered")},
                problems=[]
                if webhooks.ok(report)
                else report["check"]["problems"][:5] or ["no delivery answered"],
            )
        ]


async def database_facts(database_url: str) -> tuple[int | None, str]:
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        version = str(await connection.fetchval("SHOW server_version"))
        return await local_postmaster(connection), version
    finally:
        await connection.close()


def server_summary(name: str, server: ServerProcess) -> dict[str, Any]:
    return {
        "name": name,
        "workers": server.workers,
        "ready_s": round(server.ready_s, 2),
        "exit_status": server.exit_status,
        "error_log_lines": server.error_log_lines,
    }


# --- report ----------------------------------------------------------------------------------


def cpu_text(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return ""
    names = ("load", "server", "postgres", "machine")
    aliases = {"job": "load"}  # the sync job is its own load
    values = {aliases.get(k, k): v for k, v in cpu.items()}
    return " / ".join(f"{values[n]:.2f}" if n in values else "-" for n in names)


def table(rows: list[Row]) -> str:
    lines = [
        "| figure | result | target | verdict | CPU cores: load / server / PostgreSQL / machine |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.figure, row.result, row.target or "-", row.verdict, cpu_text(row.cpu)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def print_report(report: dict[str, Any], rows: list[Row]) -> None:
    m = report["machine"]
    print()
    print(f"command:  {report['command']}")
    print(
        f"machine:  {m['nproc']} cores ({m['cpu_model']}), {m['ram_gb']} GB RAM, {m['platform']}, "
        f"Python {m['python']}, PostgreSQL {m.get('postgres') or '?'}"
    )
    print(f"database: {report['database']}; server pool {report['server_pool']}")
    print(f"date:     {report['started_at']}; load average before: {m['loadavg_before']}")
    print()
    print(table(rows))
    problems = [(row, p) for row in rows for p in row.problems]
    if problems:
        print("\nproblems:")
        for row, problem in problems:
            print(f"  {row.key}: {problem}")
    for server in report["servers"]:
        if server["error_log_lines"] or server["exit_status"]:
            print(
                f"\nwarning: {server['name']} logged {server['error_log_lines']} ERROR lines, "
                f"exit status {server['exit_status']}"
            )
    print(
        f"\nfull run: {report['total_s'] / 60:.1f} min; figures in "
        f"{RESULTS_FILE.relative_to(PROJECT_ROOT)}"
    )


def other_sections() -> dict[str, Any]:
    """Sections that tools outside the suite wrote (bench.breakdown...): kept, each with its
    own date and command. The suite's own (sync, webhooks) are this run's or absent."""
    sections = read_results().get("sections")
    if not isinstance(sections, dict):
        return {}
    return {k: v for k, v in sections.items() if k not in GROUPS}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    began = time.monotonic()
    started_at = datetime.now(UTC)
    machine = machine_info()
    try:
        with work_directory("meterline-bench-") as work_dir:
            suite = Suite(args, work_dir)
            with postgres_server(work_dir) as postgres:
                suite.run(postgres)
    except KeyboardInterrupt:
        # Every context above has stopped its processes and dropped its database by now.
        print("\ninterrupted: servers stopped, benchmark databases dropped", file=sys.stderr)
        sys.exit(130)
    machine["postgres"] = suite.postgres_version or next(
        (s["postgres_version"] for s in suite.sections.values()), None
    )
    report: dict[str, Any] = {
        "suite": "meterline performance suite",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command_line("bench.suite", argv),
        "machine": machine,
        "database": postgres.description,
        "server_pool": server_pool_size(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("only", "skip")},
        "servers": suite.servers,
        "total_s": round(time.monotonic() - began, 1),
        "rows": [{**asdict(row), "verdict": row.verdict} for row in suite.rows],
        "sections": {**other_sections(), **suite.sections},
    }
    write_results(report)
    print_report(report, suite.rows)
    if any(row.problems for row in suite.rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
