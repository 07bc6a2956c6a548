"""`meterline` commands and servers run as an operator runs them: separate processes, on the
test's clock.

A test that fixes the app's clock must run its commands at that moment too (`--as-of`); a
command left on the machine's clock would pass until the real date overtakes the fake one, then
fail for ever. `meterline()` refuses to run one that way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from tests.conftest import Clock, fixed_clocks

# Meterline's settings (and the JWT test secrets): a command sees only those a test gives it.
_SETTING_PREFIXES = (
    "METERLINE",
    "DATABASE_URL",
    "JWT",
    "SERVICE_JWT",
    "STRIPE",
    "CLERK",
    "CRON",
    "CHECKOUT",
    "BILLING",
    "DB_",
    "SYNC_",
    "LATE_USAGE",
    "METRICS",
    "ROLE_ALIASES",
    "WEBHOOK_EVENT",
    "HOST",
    "PORT",
    "PUBLIC_BASE_URL",
    "PORTAL_",
)
# What moves the clock of a whole process tree (tools/test-at, libfaketime): kept for children.
CLOCK_VARIABLES = ("LD_PRELOAD", "CLOCKSHIFT_SECONDS")


def child_env(values: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: the machine's, without Meterline's settings, plus
    `values`. The variables that move the clock stay, so the child runs at the test's time."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    return {**kept, **(values or {})}


def meterline(
    *args: str,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`python -m meterline ARGS`. With a fixed `clock` the command runs `--as-of` its moment
    (in development, where commands that write accept it)."""
    command = [sys.executable, "-m", "meterline"]
    values = dict(env or {})
    if clock is not None and clock.fixed is not None:
        command += ["--as-of", clock().isoformat()]
        values.setdefault("METERLINE_ENV", "development")
    elif any(c.fixed is not None for c in fixed_clocks()):
        raise AssertionError(
            "this test fixes the app's clock: run the command on it, meterline(..., clock=...)"
        )
    return subprocess.run(
        [*command, *args],
        env=child_env(values),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
