"""Whose clock decides (docs/design.md, "Time"): the app's. The database's clock may only fill
audit columns, and the machine's clock is read in the few places that define "now" for the app,
a command, a server or a token. A new reading anywhere else fails here first."""

from __future__ import annotations

import re
from pathlib import Path

CODE = Path(__file__).parents[1] / "meterline"

# SQL that reads the database's clock (`ctx.now()`, the app's, is not SQL).
DATABASE_CLOCK = re.compile(
    r"(?<![.\w])(now\(\)|current_(date|time|timestamp)\b|localtime(stamp)?\b|clock_timestamp|"
    r"statement_timestamp|transaction_timestamp)",
    re.IGNORECASE,
)
# Where it may: audit columns (when a row was written), never read by a rule.
AUDIT_WRITES = {
    ("db/subscriptions.py", "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now())"),
    ("db/subscriptions.py", "read_seq = EXCLUDED.read_seq, updated_at = now()"),
    (
        "db/subscriptions.py",
        '"UPDATE subscriptions SET cancel_at_period_end = $2, updated_at = now() WHERE id = $1",',
    ),
    (
        "db/invoices.py",
        "INSERT INTO invoices ({_COLUMNS}, updated_at) VALUES ({placeholders}, now())",
    ),
    ("db/invoices.py", "ON CONFLICT (id) DO UPDATE SET {updates}, updated_at = now(),"),
    (
        "db/usage.py",
        '"""now() of the current transaction: what a column\'s default would have stored."""',
    ),
    ("db/usage.py", 'row = await sql.fetchrow("SELECT now() AS now")'),  # usage_events.recorded_at
}

# The machine's clock.
MACHINE_CLOCK = re.compile(r"\b(datetime\.now|datetime\.datetime\.now|time\.time|date\.today)\(")
# Where it may: the app's default clock, a command's, `serve` (it runs on the real clock), the
# sync job's default, and token lifetimes (real time, not billing).
MACHINE_READS = {
    ("app.py", "return datetime.now(UTC)"),
    ("cli.py", "return datetime.now(UTC)"),
    ("cli.py", "now = datetime.now(UTC)"),
    ("jobs/sync.py", "clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))"),
    ("auth.py", "now = time.time()"),
    ("auth.py", "now = datetime.datetime.now(datetime.UTC)"),
}


def readings(pattern: re.Pattern[str]) -> set[tuple[str, str]]:
    found = set()
    for path in CODE.rglob("*.py"):
        relative = path.relative_to(CODE).as_posix()
        if relative.startswith("db/migrations/"):
            continue
        for line in path.read_text().splitlines():
            if pattern.search(line):
                found.add((relative, line.strip()))
    return found


def test_no_rule_reads_the_database_clock() -> None:
    unexpected = readings(DATABASE_CLOCK) - AUDIT_WRITES
    assert not unexpected, (
        "the database's clock is read outside an audit column; pass the app's `now` instead: "
        f"{sorted(unexpected)}"
    )


def test_the_machine_clock_is_read_only_where_now_is_defined() -> None:
    unexpected = readings(MACHINE_CLOCK) - MACHINE_READS
    assert not unexpected, (
        "the machine's clock is read outside the places that define now; take a clock or a "
        f"`now` argument instead: {sorted(unexpected)}"
    )


def test_the_scans_see_the_known_readings() -> None:
    """If the scans found nothing at all, the two tests above would pass on nothing."""
    assert readings(DATABASE_CLOCK) == AUDIT_WRITES
    assert readings(MACHINE_CLOCK) == MACHINE_READS
